"""`python3 -m bench.handover`: the handover tables, wgpy next to
wireguard-go as the client, from the same run.

Each measurement is one handover in a fresh lab (tests/handover_lab.py:
client, router and server namespaces, the client with two uplinks; the
server runs wireguard-go unless --server says otherwise), so that a run
that never recovers cannot spoil the next one. The two clients alternate
run by run. Per client:

- uplink: a client -> server UDP stream (50 packets/s), persistent keepalive
  0: how soon after the switch it flows again;
- downlink only: a server -> client UDP stream (200 packets/s) and nothing
  else, persistent keepalive 0, 5 and 25 s: how soon it flows again (the
  client must tell the server its new address by itself);
- TCP: one paced server -> client TCP stream through the handover,
  keepalive 0, 5 and 25 s: whether it survives (all bytes, SHA-256 equal)
  and its longest stall.

"Resumes after N s" is measured from the moment the switch is complete
(make-before-break: the old address removed) to the first packet after
which the stream flows with no gap over 100 ms; a run still broken
--max-wait seconds later counts as "never". Medians over --runs runs.

Two more scenarios concern endpoints by name (tests/names_lab.py; the
client knows the server as `wgsrv.test`: wgpy keeps the name, wireguard-go
is given it through `wg set`, which resolves it once):

- family-switch: the client's uplink goes from IPv4-only to IPv6-only, the
  server being dual-stack with an A and an AAAA record;
- moving-server: the server's address changes and its DNS record follows
  (TTL 1 s), the client behind a stateful firewall.

For those, each run measures, in a fresh lab, a downlink UDP stream, an
uplink one and a paced TCP stream together: when each resumes after the
switch (family-switch: the old path removed; moving-server: the record
changed) and whether the TCP connection survives.

Exit status: 0 measured and printed, 2 missing precondition or bad usage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from handover_lab import SCENARIOS, HandoverLab, RunResult, build, median, run_handovers
from names_lab import FAMILY_SWITCH, MOVING_SERVER, build_family, build_moving
from netns import NetnsLab, remove_stale_namespaces, root_netns_unavailable_reason
from wgnet import WGPY, WIREGUARD_GO

CLIENTS = (WGPY, WIREGUARD_GO)
KEEPALIVES = (0, 5, 25)
NAME_SCENARIOS = (FAMILY_SWITCH, MOVING_SERVER)


@dataclass
class Measured:
    """One client's results: lists of per-run results by measurement."""

    client: str
    uplink: list[RunResult] = field(default_factory=list)
    downlink: dict[int, list[RunResult]] = field(default_factory=dict)
    tcp: dict[int, list[RunResult]] = field(default_factory=dict)


def _one(
    work: Path,
    scenario: str,
    client: str,
    server: str,
    keepalive: int,
    max_wait: float,
    **streams: bool,
) -> RunResult:
    lab = NetnsLab(Path(tempfile.mkdtemp(prefix="handover-", dir=work)))
    try:
        h = build(lab, scenario, client_impl=client, server_impl=server, keepalive=keepalive)
        [result] = run_handovers(h, 1, before=1.0, after=1.0, max_after=max_wait, **streams)
        return result
    finally:
        lab.cleanup()


def measure(
    scenario: str,
    server: str,
    runs: int,
    max_wait: float,
    work: Path,
    progress: Callable[[str], None],
    clients: Sequence[str] = CLIENTS,
) -> list[Measured]:
    out = [Measured(c) for c in clients]
    plan: list[tuple[str, int, dict[str, bool]]] = [
        ("uplink", 0, {"downlink": False, "uplink": True})
    ]
    plan += [("downlink", ka, {"downlink": True}) for ka in KEEPALIVES]
    plan += [("tcp", ka, {"downlink": False, "tcp": True}) for ka in KEEPALIVES]
    for what, ka, streams in plan:
        for run in range(runs):
            for m in out if run % 2 == 0 else reversed(out):
                t0 = time.monotonic()
                r = _one(work, scenario, m.client, server, ka, max_wait, **streams)
                if what == "uplink":
                    m.uplink.append(r)
                    value = r.uplink_resume
                elif what == "downlink":
                    m.downlink.setdefault(ka, []).append(r)
                    value = r.downlink_resume
                else:
                    m.tcp.setdefault(ka, []).append(r)
                    value = r.tcp_stall
                progress(
                    f"{what:8} keepalive {ka:2} run {run + 1}/{runs} {m.client:12} "
                    f"{_seconds(value, max_wait):>10}  ({time.monotonic() - t0:.1f} s)"
                )
    return out


def _one_named(work: Path, scenario: str, client: str, server: str, max_wait: float) -> RunResult:
    lab = NetnsLab(Path(tempfile.mkdtemp(prefix="names-", dir=work)))
    try:
        builder = build_family if scenario == FAMILY_SWITCH else build_moving
        h: HandoverLab = builder(lab, client_impl=client, server_impl=server)
        [result] = run_handovers(
            h, 1, downlink=True, uplink=True, tcp=True, before=1.0, after=1.0, max_after=max_wait
        )
        return result
    finally:
        lab.cleanup()


def measure_named(
    scenario: str,
    server: str,
    runs: int,
    max_wait: float,
    work: Path,
    progress: Callable[[str], None],
    clients: Sequence[str] = CLIENTS,
) -> dict[str, list[RunResult]]:
    """The endpoint-name scenarios: per client, one result per run."""
    out: dict[str, list[RunResult]] = {c: [] for c in clients}
    for run in range(runs):
        for client in clients if run % 2 == 0 else list(reversed(clients)):
            t0 = time.monotonic()
            r = _one_named(work, scenario, client, server, max_wait)
            out[client].append(r)
            progress(
                f"{scenario} run {run + 1}/{runs} {client:12} downlink "
                f"{_seconds(r.downlink_resume, max_wait):>10}  ({time.monotonic() - t0:.1f} s)"
            )
    return out


def named_table(results: dict[str, list[RunResult]], max_wait: float, runs: int) -> str:
    rows: list[tuple[str, Callable[[list[RunResult]], str]]] = [
        (
            "downlink UDP (server -> client, 200 pkt/s) resumes",
            lambda rs: _resume_cell(rs, lambda r: r.downlink_resume, max_wait),
        ),
        (
            "uplink UDP (client -> server, 50 pkt/s) resumes",
            lambda rs: _resume_cell(rs, lambda r: r.uplink_resume, max_wait),
        ),
        (
            "TCP stream through the tunnel: survives / median longest stall",
            lambda rs: (
                f"{sum(1 for r in rs if r.tcp_intact)}/{len(rs)}; "
                + _seconds(median([r.tcp_stall for r in rs if r.tcp_intact]), max_wait)
            ),
        ),
    ]
    header = "| what | " + " | ".join(f"{c} (median of {runs})" for c in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(rs) for rs in results.values()) + " |")
    return "\n".join(lines)


def _seconds(v: float | None, max_wait: float) -> str:
    if v is None or v == float("inf"):
        return f"> {max_wait:g} s"
    return f"{v:.3f} s" if v < 0.1 else f"{v:.2f} s"


def _never(values: Sequence[float | None]) -> int:
    return sum(1 for v in values if v is None or v == float("inf"))


def _resume_cell(
    results: Sequence[RunResult], pick: Callable[[RunResult], float | None], max_wait: float
) -> str:
    values = [pick(r) for r in results]
    text = _seconds(median(values), max_wait)
    n = _never(values)
    return text + (f" (never within {max_wait:g} s in {n} of {len(values)})" if n else "")


def table(results: list[Measured], max_wait: float, runs: int) -> str:
    def cells(m: Measured) -> list[str]:
        up = _resume_cell(m.uplink, lambda r: r.uplink_resume, max_wait)
        down = " / ".join(
            _resume_cell(m.downlink[ka], lambda r: r.downlink_resume, max_wait) for ka in KEEPALIVES
        )
        survived = [sum(1 for r in m.tcp[ka] if r.tcp_intact) for ka in KEEPALIVES]
        stalls = " / ".join(
            _seconds(median([r.tcp_stall for r in m.tcp[ka]]), max_wait) for ka in KEEPALIVES
        )
        survives = " / ".join(f"{s}/{runs}" for s in survived)
        return [up, down, f"survives {survives}; median stall {stalls}"]

    rows = [
        "uplink traffic resumes after the switch",
        "downlink-only UDP (server -> client, 200 pkt/s) resumes, "
        "persistent keepalive 0 / 5 / 25 s",
        "long-lived TCP stream through the tunnel: survives / longest stall, "
        "keepalive 0 / 5 / 25 s",
    ]
    columns = {m.client: cells(m) for m in results}
    header = "| what | " + " | ".join(f"{c} (median of {runs})" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for i, row in enumerate(rows):
        lines.append(f"| {row} | " + " | ".join(columns[c][i] for c in columns) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 -m bench.handover",
        description="Handover tables: wgpy and wireguard-go as the moving client.",
    )
    p.add_argument("--runs", type=int, default=5, help="handovers per cell (default 5)")
    p.add_argument(
        "--max-wait", type=float, default=40.0, help="seconds before a run counts as never (40)"
    )
    p.add_argument("--scenario", choices=SCENARIOS + NAME_SCENARIOS, default=SCENARIOS[0])
    p.add_argument(
        "--server", choices=CLIENTS, default=WIREGUARD_GO, help="the server's implementation"
    )
    p.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated subset of: %(default)s"
    )
    p.add_argument("--quick", action="store_true", help="2 runs, 10 s max wait")
    p.add_argument("--json", type=Path, help="also write every run's numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.runs, args.max_wait = 2, 10.0
    reason = root_netns_unavailable_reason()
    missing = [p for p in ("wireguard-go", "wg", "ss", "ip") if shutil.which(p) is None]
    if reason or missing:
        print(f"bench.handover: {reason or 'needs ' + ', '.join(missing)}", file=sys.stderr)
        return 2
    clients = [c for c in args.clients.split(",") if c]
    if not clients or any(c not in CLIENTS for c in clients):
        print(f"bench.handover: --clients takes {','.join(CLIENTS)}", file=sys.stderr)
        return 2
    remove_stale_namespaces()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    named = args.scenario in NAME_SCENARIOS
    if named and shutil.which("dnsmasq") is None:
        print("bench.handover: needs dnsmasq", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wgpy-handover-") as work:
        started = time.monotonic()
        what = (args.scenario, args.server, args.runs, args.max_wait, Path(work), progress, clients)
        if named:
            per_client = measure_named(*what)
            text = named_table(per_client, args.max_wait, args.runs)
            dump: object = {c: [asdict(r) for r in rs] for c, rs in per_client.items()}
        else:
            measured = measure(*what)
            text = table(measured, args.max_wait, args.runs)
            dump = [asdict(m) for m in measured]
    print(
        f"Handover ({args.scenario}), server {args.server}, {args.runs} runs per cell, "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print(text)
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
