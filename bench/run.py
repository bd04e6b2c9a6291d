"""The benchmark run: repetitions, round-robin over configurations, busy
checks around every measurement, and the results document.

Order of a run: the handshake benchmarks (before any network traffic, as
`cargo` may compile), a quiet check, then for each repetition every
configuration in turn (the order rotates by one each repetition so none
always runs first), each built fresh and measured as one block, then the
memory measurements and the optional soak.

A measurement during which other processes used more than
`max_other_cpu` cores is repeated once after the machine is quiet again;
if it is disturbed again, or the machine never gets quiet, the run is
refused (`Busy`) and nothing is reported.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wgpy
from netns import NetnsLab

from bench import cpu, handshake, measure, memory, stats, topology
from bench.topology import Config, Setup

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
QUIET_WINDOW = 1.0  # seconds sampled to decide the machine is quiet


class Busy(RuntimeError):
    """The machine is too busy to measure; the run must not be reported."""


# What a run can measure; `--only`/`--skip` choose among them.
MEASUREMENTS = ("handshake", "first", "ping", "tcp1", "tcp4", "udp", "load", "memory")
PER_CONFIGURATION = ("first", "ping", "tcp1", "tcp4", "udp", "load")


@dataclass
class Options:
    configs: list[Config]
    measurements: tuple[str, ...] = MEASUREMENTS
    repetitions: int = 3
    duration: int = 10  # seconds of each TCP run
    udp_len: int = 1200  # UDP payload bytes
    ping_count: int = 200
    peers: int = 1000
    cargo: bool = True
    soak: int = 0  # seconds; 0 = no soak
    soak_interval: float = 5.0
    max_other_cpu: float = 0.2  # cores
    quiet_wait: float = 60.0  # seconds to wait for a quiet machine before refusing

    @property
    def udp_duration(self) -> int:
        return max(1, self.duration // 2)

    @property
    def search_duration(self) -> int:
        return max(1, self.duration // 5)

    @property
    def load_duration(self) -> int:
        return max(3, self.duration // 2)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["configs"] = [c.key for c in self.configs]
        d.update(
            udp_duration=self.udp_duration,
            search_duration=self.search_duration,
            load_duration=self.load_duration,
        )
        return d


@dataclass
class Benchmark:
    options: Options
    work_dir: Path
    log: Callable[[str], None]
    samples: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    busy_checks: list[dict[str, Any]] = field(default_factory=list)
    threads: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    labs: list[NetnsLab] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.monitor = cpu.BusyMonitor(self.options.max_other_cpu)

    # --- the run ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        results: dict[str, Any] = {
            "meta": environment(started),
            "options": self.options.as_dict(),
        }
        if "handshake" in self.options.measurements:
            results["handshake"] = self.handshakes()
        self.require_quiet("before the first measurement")
        configs = self.options.configs
        # With only handshake and/or memory measurements asked for, no block runs.
        repetitions = self.options.repetitions
        if not set(self.options.measurements) & set(PER_CONFIGURATION):
            repetitions = 0
        for rep in range(repetitions):
            shift = rep % len(configs)
            for config in configs[shift:] + configs[:shift]:
                self.require_quiet(f"before {config.label}")
                self.block(rep, config)
        if "memory" in self.options.measurements:
            results["memory"] = self.memory()
        if self.options.soak:
            results["soak"] = self.soak()
        results.update(
            samples=self.samples,
            threads=self.threads,
            records=self.records,
            busy_checks=self.busy_checks,
        )
        results["meta"]["seconds"] = round(time.monotonic() - t0, 1)
        if module_stamp() != results["meta"]["wgpy"]["module_stamp"]:
            raise measure.MeasurementError(
                "the installed wgpy module changed during the run (reinstalled?): "
                "the figures would mix two builds"
            )
        return results

    def handshakes(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.options.cargo:
            self.log("handshakes: cargo bench --bench crypto (may compile first)")
            result["cargo"] = handshake.cargo_bench(REPO)
            if "error" in result["cargo"]:
                self.log(f"  cargo bench unavailable: {result['cargo']['error'].splitlines()[0]}")
        result["python"] = self.guarded("handshakes (Python API)", handshake.python_loop)
        self.log(f"  {result['python']['handshakes_per_s']:,.0f} handshakes/s via the Python API")
        return result

    def block(self, rep: int, config: Config) -> None:
        """Build `config` fresh and take every measurement of one repetition on it."""
        o = self.options
        lab = self.new_lab(f"rep{rep + 1}-{config.key}")
        try:
            setup = topology.build(lab, config)
            server = measure.start_iperf_server(setup)
            prefix = f"[{rep + 1}/{o.repetitions}] {config.label}:"
            wanted = o.measurements
            if "first" in wanted:  # first: it needs a tunnel that has carried nothing yet
                self.first_packet(rep, config, setup, prefix)
            if "ping" in wanted:
                idle = self.guarded(
                    f"{prefix} idle ping", lambda: measure.ping(setup, o.ping_count)
                )
                self.record_ping(rep, config, "ping_idle", idle)
            for streams in (1, 4):
                if f"tcp{streams}" in wanted:
                    tcp = self.guarded(
                        f"{prefix} TCP {streams}",
                        lambda s=streams: measure.tcp(setup, server, s, o.duration, threads=s == 1),
                    )
                    self.record_tcp(rep, config, streams, tcp)
            if "udp" in wanted:
                self.udp(rep, config, setup, prefix)
            if "load" in wanted:
                loaded = self.guarded(
                    f"{prefix} ping under load",
                    lambda: measure.ping_under_load(setup, server, o.load_duration),
                )
                self.record_ping(rep, config, "ping_load", loaded)
            self.log(self.block_summary(prefix, config.key, rep))
        finally:
            self.close_lab(lab)

    def first_packet(self, rep: int, config: Config, setup: Setup, prefix: str) -> None:
        attempts = 0

        def probe() -> measure.FirstPacket:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # a repeat needs a tunnel without a session again
                topology.reset_tunnel(setup)
            return measure.first_packet(setup)

        first = self.guarded(f"{prefix} first packet", probe)
        self.record(rep, config, "first_packet", asdict(first), first_packet_ms=first.ms)

    def udp(self, rep: int, config: Config, setup: Setup, prefix: str) -> None:
        """UDP without a rate limit, then (in tunnels) the search for a rate
        with under 1 % loss, starting from what the unlimited run delivered."""
        o = self.options
        flood = self.guarded(
            f"{prefix} UDP unlimited", lambda: measure.udp(setup, o.udp_len, 0, o.udp_duration)
        )
        self.record(
            rep,
            config,
            "udp_unlimited",
            asdict(flood),
            udp_delivered_kpps=flood.delivered_pps / 1e3,
            udp_link_kpps=None
            if flood.link_delivered_pps is None
            else flood.link_delivered_pps / 1e3,
            udp_sent_kpps=flood.sent_pps / 1e3,
            udp_loss_pct=flood.loss_percent,
        )
        if not config.tunnel:
            return  # the raw veth is the ceiling; its loss comes from iperf3 itself
        best, probes = self.guarded(
            f"{prefix} UDP rate search",
            lambda: measure.udp_search(setup, o.udp_len, flood.delivered_pps, o.search_duration),
        )
        self.record(
            rep,
            config,
            "udp_search",
            {"probes": [asdict(p) for p in probes], "best": None if best is None else asdict(best)},
            udp_sustainable_kpps=None if best is None else best.delivered_pps / 1e3,
            udp_sustainable_loss_pct=None if best is None else best.loss_percent,
        )

    def memory(self) -> list[dict[str, Any]]:
        keys = memory.peer_keys(self.options.peers)
        result = []
        impls = [topology.WGPY_WGPY.sender]
        for config in (topology.HEAD_HEAD, topology.WGGO_WGGO, topology.BORINGTUN_BORINGTUN):
            if not topology.missing_programs(config):
                impls.append(config.sender)
        for impl in impls:
            assert impl is not None
            lab = self.new_lab(f"memory-{impl}")
            try:
                m = memory.rss_with_peers(lab, impl, keys)
            finally:
                self.close_lab(lab)
            self.log(
                f"memory: {impl} RSS {m['rss_empty_bytes'] / 1e6:.1f} MB idle, "
                f"{m['rss_peers_bytes'] / 1e6:.1f} MB with {m['peers']} peers"
            )
            result.append(m)
        return result

    def soak(self) -> dict[str, Any]:
        lab = self.new_lab("soak")
        try:
            self.log(f"soak: {self.options.soak} s of wgpy↔wgpy traffic with rekeys")
            return memory.soak(
                lab, self.options.soak, self.options.soak_interval, self.options.peers, self.log
            )
        finally:
            self.close_lab(lab)

    # --- busy checks -----------------------------------------------------------

    def require_quiet(self, when: str) -> None:
        quiet, use = self.monitor.wait_for_quiet(QUIET_WINDOW, self.options.quiet_wait)
        self.busy_checks.append({"label": f"quiet check {when}", **busy_entry(use)})
        if not quiet:
            raise Busy(
                f"machine too busy to measure {when}: {use.describe()} (limit"
                f" {self.options.max_other_cpu:g} cores, waited {self.options.quiet_wait:g} s)"
            )

    def guarded(self, label: str, measurement: Callable[[], T]) -> T:
        """Run `measurement`; repeat it once if other processes disturbed it."""
        for attempt in (1, 2):
            self.monitor.restart()
            value = measurement()
            use = self.monitor.checkpoint()
            self.busy_checks.append({"label": label, "attempt": attempt, **busy_entry(use)})
            if not cpu.too_busy(use, self.options.max_other_cpu):
                return value
            if attempt == 2:
                raise Busy(f"{label} disturbed twice: {use.describe()}")
            self.log(f"{label}: disturbed ({use.describe()}); repeating once the machine is quiet")
            self.require_quiet(f"repeating {label}")
        raise AssertionError("unreachable")

    # --- recording -------------------------------------------------------------

    def record(
        self, rep: int, config: Config, kind: str, data: dict[str, Any], **figures: float | None
    ) -> None:
        per_config = self.samples.setdefault(config.key, {})
        for metric, value in figures.items():
            values = per_config.setdefault(metric, [])
            values += [None] * (rep - len(values))  # a measurement missing earlier stays None
            values.append(value)
        self.records.append({"config": config.key, "repetition": rep + 1, "kind": kind, **data})

    def record_tcp(self, rep: int, config: Config, streams: int, tcp: measure.Throughput) -> None:
        per_gb = tcp.cpu_per_gb()
        figures: dict[str, float | None] = {f"tcp{streams}_gbps": tcp.gbps}
        if streams == 1:
            figures.update(
                cpu_daemons_s_per_gb=per_gb.get("daemons"),
                cpu_sender_s_per_gb=per_gb.get("sender"),
                cpu_receiver_s_per_gb=per_gb.get("receiver"),
                cpu_iperf3_s_per_gb=per_gb.get("iperf3"),
                cpu_machine_s_per_gb=per_gb.get("machine"),
            )
            self.threads[config.key] = tcp.threads
        data = asdict(tcp)
        data["cpu_s_per_gb"] = per_gb
        self.record(rep, config, f"tcp{streams}", data, **figures)

    def record_ping(self, rep: int, config: Config, kind: str, trips: measure.RoundTrips) -> None:
        data = {
            "sent": trips.sent,
            "received": len(trips.rtts_ms),
            "load_gbps": trips.load_gbps,
            "median_ms": stats.median(trips.rtts_ms),
            "p99_ms": stats.percentile(trips.rtts_ms, 0.99),
            "max_ms": max(trips.rtts_ms, default=None),
        }
        self.record(
            rep,
            config,
            kind,
            data,
            **{f"{kind}_ms": data["median_ms"], f"{kind}_p99_ms": data["p99_ms"]},
        )

    def block_summary(self, prefix: str, key: str, rep: int) -> str:
        """One progress line with this repetition's figures for one configuration."""
        shown = (
            ("tcp1_gbps", "TCP {:.2f} Gbit/s"),
            ("tcp4_gbps", "TCP x4 {:.2f} Gbit/s"),
            ("udp_delivered_kpps", "UDP {:.1f} kpps"),
            ("udp_sustainable_kpps", "sustainable {:.1f} kpps"),
            ("ping_idle_ms", "ping {:.3f} ms"),
            ("ping_load_ms", "loaded {:.3f} ms"),
            ("first_packet_ms", "first packet {:.2f} ms"),
            ("cpu_daemons_s_per_gb", "daemons {:.2f} s/GB"),
        )
        parts = []
        for metric, text in shown:
            values = self.samples.get(key, {}).get(metric, [])
            if len(values) > rep and values[rep] is not None:
                parts.append(text.format(values[rep]))
        return f"{prefix} {', '.join(parts)}"

    # --- labs ------------------------------------------------------------------

    def new_lab(self, name: str) -> NetnsLab:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        lab = NetnsLab(path)
        self.labs.append(lab)
        return lab

    def close_lab(self, lab: NetnsLab) -> None:
        self.labs.remove(lab)
        lab.cleanup()

    def cleanup(self) -> None:
        """Remove every namespace and process still present (after a failure)."""
        problems = []
        for lab in reversed(self.labs):
            try:
                lab.cleanup()
            except Exception as exc:
                problems.append(str(exc))
        self.labs.clear()
        if problems:
            raise RuntimeError("\n".join(problems))


def busy_entry(use: cpu.OtherUse) -> dict[str, Any]:
    return {
        "seconds": round(use.seconds, 2),
        "other_cores": round(use.cores, 3),
        "steal_seconds": use.steal_seconds,
        "kernel_thread_seconds": use.kernel_thread_seconds,
        "top": [{"pid": p, "comm": c, "cpu_seconds": s} for p, c, s in use.top[:5]],
    }


# --- environment ---------------------------------------------------------------------


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False, cwd=REPO
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def module_stamp() -> list[float]:
    """Size and modification time of the installed extension module, which
    every daemon started during the run loads: if it changes, someone
    reinstalled wgpy mid-run."""
    st = Path(wgpy._core.__file__).stat()
    return [st.st_size, st.st_mtime]


def environment(started: datetime.datetime) -> dict[str, Any]:
    """What was measured, on what: recorded so results can be compared later."""
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    core = Path(wgpy._core.__file__)
    built = datetime.datetime.fromtimestamp(core.stat().st_mtime, datetime.UTC)
    stamp = module_stamp()
    sources = [p.stat().st_mtime for p in (REPO / "rust" / "src").rglob("*.rs")]
    newest_source = max(sources, default=0.0)
    commit = _output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = bool(_output(["git", "status", "--porcelain", "--", "rust", "python"]))
    return {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": sys.version.split()[0],
        "wgpy": {
            "git": f"{commit}{' + uncommitted changes' if dirty else ''}",
            "module": str(core),
            "module_built": built.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "module_stamp": stamp,
            # The daemons run the installed module; if rust/src changed after it
            # was built, the figures are for older code.
            "installed_older_than_source": core.stat().st_mtime < newest_source,
        },
        "wireguard_go": (_output(["wireguard-go", "--version"]).splitlines() or ["absent"])[0],
        "iperf3": (_output(["iperf3", "--version"]).splitlines() or ["absent"])[0],
    }
