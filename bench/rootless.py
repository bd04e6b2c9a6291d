"""Rootless mode against onetun, on the same work in the same run:
`python3 -m bench.rootless [--seconds N] [--connections N] [--rounds N] [--far IMPL]`
(as root: it builds namespaces; the forwarders themselves run unprivileged).

- The far side is a WireGuard daemon with a TUN device in one namespace
  (tests/rootless_lab.py): current wireguard-go from the anchors when it is
  built (bench/README.md), else Debian's; `--far` chooses. It must not be
  the bottleneck: Debian's 2022 build carries about 0.6 Gbit/s, which is
  what both forwarders then measure. In
  the client namespace `wgpy forward` (as nobody) and onetun each forward a
  local port to the far side's iperf3 server and to its echo server, each
  as a peer of its own.
- Throughput: one iperf3 TCP stream through the forward, both directions
  (-R: the far side sends, the usual download), for --seconds each.
- Connections per second: --connections TCP connections, 32 at a time,
  each sending 16 bytes and reading the echo, then closing.
- Rounds alternate the two tools; the table reports medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
import wgpy
from netns import NetnsLab, wait_until
from rootless_lab import RootlessLab, rootless_lab, serve_echo
from wgnet import INNER_V4, OUTER_V4, WGPY, WIREGUARD_GO, WIREGUARD_GO_HEAD, program

ONETUN = shutil.which("onetun") or "/tmp/anchors/bin/onetun"
IPERF_PORT, ECHO_PORT = 5201, 7
LOCAL_PORTS = {"wgpy": (9201, 9007), "onetun": (9301, 9107)}
ONETUN_ADDR = "10.200.0.3"


def start_wgpy(lab: RootlessLab) -> None:
    iperf, echo = LOCAL_PORTS["wgpy"]
    lab.run_as_nobody(
        "forward",
        "--tcp", f"127.0.0.1:{iperf}={INNER_V4[0]}:{IPERF_PORT}",
        "--tcp", f"127.0.0.1:{echo}={INNER_V4[0]}:{ECHO_PORT}",
    )  # fmt: skip


def start_onetun(lab: RootlessLab) -> None:
    key = wgpy.PrivateKey.generate()
    lab.far.set_peer(key.public_key(), [f"{ONETUN_ADDR}/32"])
    key_file = lab.config_dir / "onetun.key"
    key_file.write_text(key.to_base64() + "\n")
    iperf, echo = LOCAL_PORTS["onetun"]
    argv = [
        ONETUN,
        f"127.0.0.1:{iperf}:{INNER_V4[0]}:{IPERF_PORT}:TCP",
        f"127.0.0.1:{echo}:{INNER_V4[0]}:{ECHO_PORT}:TCP",
        "--private-key-file",
        str(key_file),
        "--endpoint-public-key",
        lab.far.public_key.to_base64(),
        "--endpoint-addr",
        f"{OUTER_V4[0]}:{lab.far.port}",
        "--source-peer-ip",
        ONETUN_ADDR,
        "--log",
        "error",
    ]
    process = lab.client_ns.spawn(argv)
    wait_until(
        lambda: lab.client_ns.run(["ss", "-Htln", f"sport = :{echo}"]).stdout.strip() != "",
        timeout=10,
        what="onetun",
    )
    assert process.alive(), process.log()


def iperf(lab: RootlessLab, tool: str, seconds: float, reverse: bool) -> float:
    """Gbit/s of one TCP stream through `tool`'s forward."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(LOCAL_PORTS[tool][0]), "-t", str(seconds), "-J"]
    out = lab.client_ns.run([*argv, *(["-R"] if reverse else [])], timeout=seconds + 30)
    end = json.loads(out.stdout)["end"]
    return float(end["sum_received"]["bits_per_second"]) / 1e9


async def _connections(port: int, count: int, concurrency: int = 32) -> float:
    limit = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limit, await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"x" * 16)
            got = 0
            while got < 16:
                got += len(await stream.receive_some(64))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return count / (time.perf_counter() - start)


def connections_per_second(lab: RootlessLab, tool: str, count: int) -> float:
    with lab.client_ns.entered():
        return trio.run(_connections, LOCAL_PORTS[tool][1], count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.rootless")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--far",
        choices=(WIREGUARD_GO_HEAD, WIREGUARD_GO, WGPY),
        default=WIREGUARD_GO_HEAD if Path(program(WIREGUARD_GO_HEAD)).exists() else WIREGUARD_GO,
        help="the far side's implementation (default: current wireguard-go if built)",
    )
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {
        t: {"down": [], "up": [], "cps": []} for t in LOCAL_PORTS
    }
    lab = NetnsLab(Path(tempfile.mkdtemp(prefix="wgpy-bench-rootless-")))
    try:
        with rootless_lab(lab, far_impl=args.far) as rl:
            rl.serve_far("iperf3", "-s", "--forceflush", "-B", INNER_V4[0], "-p", str(IPERF_PORT))
            serve_echo(rl, ECHO_PORT)
            start_wgpy(rl)
            start_onetun(rl)
            for _ in range(args.rounds):
                for tool in LOCAL_PORTS:
                    results[tool]["down"].append(iperf(rl, tool, args.seconds, reverse=True))
                    results[tool]["up"].append(iperf(rl, tool, args.seconds, reverse=False))
                    results[tool]["cps"].append(connections_per_second(rl, tool, args.connections))
    finally:
        lab.cleanup()
    print(f"far side: {args.far} ({program(args.far)}); medians of {args.rounds} rounds")
    print(table(results))
    return 0


def table(results: dict[str, dict[str, list[float]]]) -> str:
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in results.items()}
    rows = ["| measure | wgpy forward | onetun | wgpy / onetun |", "|---|---|---|---|"]
    for key, label, unit in (
        ("down", "TCP 1 stream, far -> local", "Gbit/s"),
        ("up", "TCP 1 stream, local -> far", "Gbit/s"),
        ("cps", "connections per second", "/s"),
    ):
        w, o = med["wgpy"][key], med["onetun"][key]
        rows.append(f"| {label} | {w:.2f} {unit} | {o:.2f} {unit} | {w / o:.2f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
