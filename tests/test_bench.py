"""The benchmark harness (bench/): its pure parts on made-up input, and short
runs in namespaces that check it measures something and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netns
import pytest
import wgpy
from netns import NETNS_DIR, require_programs, require_root_netns, require_tun, wait_until
from wgpy.config import parse as parse_wg_config

from bench import cli, cpu, handshake, measure, memory, report, run, stats, topology

REPO = Path(__file__).resolve().parent.parent

# --- statistics ------------------------------------------------------------------


def test_median_ignores_missing_values():
    assert stats.median([3.0, None, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0]) == 2.5
    assert stats.median([None, float("nan")]) is None


def test_ratio_is_none_without_both_figures():
    assert stats.ratio(6.0, 2.0) == 3.0
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, 0.0) is None


def test_percentile_and_spread():
    values = [float(v) for v in range(1, 101)]
    assert stats.percentile(values, 0.99) == 99.0
    assert stats.percentile(values, 0.5) == 50.0
    assert stats.spread([100.0, 104.0, 102.0]) == pytest.approx(0.04)
    assert stats.spread([]) is None


# --- /proc accounting on a fake /proc ----------------------------------------------


def stat_line(pid, comm, ppid, *, flags=0, utime=0, stime=0, cutime=0, cstime=0, start=1000):
    # Fields 3..22 of proc(5); the ones not used by bench/cpu.py are plausible fillers.
    return (
        f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 "
        f"{utime} {stime} {cutime} {cstime} 20 0 1 0 {start} 1000000 100 "
        "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
    )


class FakeProc:
    """A directory laid out like /proc, with only what bench/cpu.py reads."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(exist_ok=True)
        self.machine(busy=0, idle=0, steal=0)

    def process(self, pid, comm, ppid, rss_kb=1000, threads=None, **times):
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(stat_line(pid, comm, ppid, **times))
        (d / "status").write_text(f"Name:\t{comm}\nVmRSS:\t{rss_kb} kB\nThreads:\t1\n")
        for tid, (name, utime) in (threads or {}).items():
            t = d / "task" / str(tid)
            t.mkdir(parents=True, exist_ok=True)
            (t / "stat").write_text(stat_line(tid, name, ppid, utime=utime))

    def exit(self, pid):
        for path in sorted((self.root / str(pid)).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (self.root / str(pid)).rmdir()

    def machine(self, busy, idle, steal):
        # user nice system idle iowait irq softirq steal guest guest_nice
        (self.root / "stat").write_text(
            f"cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"
        )


def test_parse_stat_handles_command_names_with_spaces_and_parentheses():
    s = cpu.parse_stat(stat_line(42, "a (b) c", 7, utime=5, stime=6, cutime=7, cstime=8, start=99))
    assert (s.pid, s.comm, s.ppid) == (42, "a (b) c", 7)
    assert (s.own_ticks, s.reaped_ticks, s.starttime) == (11, 15, 99)
    assert not s.kernel_thread
    assert cpu.parse_stat(stat_line(2, "kthreadd", 0, flags=cpu.PF_KTHREAD)).kernel_thread


def test_other_use_counts_only_processes_outside_the_benchmark(tmp_path):
    proc = FakeProc(tmp_path / "proc")
    proc.process(1, "init", 0)
    proc.process(2, "kthreadd", 0, flags=cpu.PF_KTHREAD)
    proc.process(100, "python3", 1, utime=50)  # the benchmark
    proc.process(101, "wgpy", 100, utime=10)  # its daemon
    proc.process(102, "iperf3", 101, utime=10)  # a grandchild
    proc.process(200, "make", 1, utime=10, cutime=5)  # someone else
    proc.process(201, "reused", 1, utime=500, start=10)  # will exit; pid reused below
    proc.process(400, "bash", 1)  # someone's shell, running a long job in a subshell
    proc.process(402, "bash", 400, utime=1)
    proc.process(401, "pytest", 402, utime=900, cutime=100)
    before = cpu.snapshot(proc.root)

    proc.process(2, "kthreadd", 0, flags=cpu.PF_KTHREAD, stime=30)
    proc.process(100, "python3", 1, utime=150)
    proc.process(101, "wgpy", 100, utime=400)
    proc.process(102, "iperf3", 101, utime=300)
    proc.process(103, "ping", 100, utime=7)  # new, but ours
    proc.process(200, "make", 1, utime=20, cutime=25)  # +10 own, +20 reaped
    proc.process(201, "cc", 1, utime=3, start=5000)  # same pid, a new process
    proc.process(300, "cargo", 1, utime=40)  # new: all of it counts
    proc.exit(401)  # the job ends, having used 6 more ticks, and so does the subshell:
    proc.exit(402)  # the shell's reaped times grow by the whole job's
    proc.process(400, "bash", 1, cutime=1 + 900 + 100 + 6)
    after = cpu.snapshot(proc.root)

    ours = cpu.descendants((before, after), 100)
    assert ours == {100, 101, 102, 103}
    use = cpu.other_use(before, after, ours, seconds=2.0, steal_ticks=4, ticks_per_second=100)
    assert use.cpu_seconds == pytest.approx((10 + 20 + 3 + 40 + 6 + 4) / 100)
    assert use.steal_seconds == pytest.approx(0.04)
    assert use.kernel_thread_seconds == pytest.approx(0.30)
    assert use.cores == pytest.approx(0.83 / 2)
    top = [(pid, comm) for pid, comm, _ in use.top]
    assert top == [(300, "cargo"), (200, "make"), (400, "bash"), (201, "cc")]
    capped = cpu.other_use(before, after, ours, 0.1, ticks_per_second=100, cpus=2)
    assert capped.cpu_seconds == pytest.approx(0.79)  # under the cap: unchanged
    capped = cpu.other_use(before, after, ours, 0.1, ticks_per_second=10, cpus=2)
    assert capped.cpu_seconds == pytest.approx(2.0)  # 7.9 s: more than 2 cores in 1 s


def test_busy_verdict_and_short_intervals():
    use = cpu.OtherUse(seconds=2.0, cpu_seconds=0.5, steal_seconds=0, kernel_thread_seconds=0)
    assert use.cores == 0.25
    assert cpu.too_busy(use, 0.2)
    assert not cpu.too_busy(use, 0.3)
    # One 10 ms tick seen in a 5 ms interval is not two busy cores.
    blip = cpu.OtherUse(seconds=0.005, cpu_seconds=0.01, steal_seconds=0, kernel_thread_seconds=0)
    assert not cpu.too_busy(blip, 0.2)


def test_busy_monitor_reads_the_fake_proc(tmp_path):
    proc = FakeProc(tmp_path / "proc")
    proc.process(100, "bench", 1)
    proc.process(200, "other", 1, utime=0)
    monitor = cpu.BusyMonitor(0.2, proc=proc.root, root=100)
    proc.process(200, "other", 1, utime=cpu.CLOCK_TICKS * 60)  # a minute of CPU
    proc.process(100, "bench", 1, utime=cpu.CLOCK_TICKS * 60)  # ours: ignored
    proc.machine(busy=0, idle=0, steal=0)
    use = monitor.checkpoint()
    assert use.top[0][:2] == (200, "other")
    assert cpu.too_busy(use, 0.2)
    assert not cpu.too_busy(monitor.checkpoint(), 0.2)  # nothing since the last checkpoint


def test_cpu_seconds_of_tracked_roles_and_threads(tmp_path):
    proc = FakeProc(tmp_path / "proc")
    ticks = cpu.CLOCK_TICKS
    proc.process(10, "wgpy", 1, utime=ticks, threads={11: ("wgpy-tun", ticks), 12: ("py", 0)})
    proc.process(20, "iperf3", 1, stime=ticks)
    proc.machine(busy=0, idle=0, steal=0)
    roles = {"sender": 10, "iperf3_server": 20, "gone": 30}
    before = cpu.sample_cpu(roles, proc=proc.root, threads=True)
    proc.process(
        10, "wgpy", 1, utime=4 * ticks, threads={11: ("wgpy-tun", 3 * ticks), 12: ("py", ticks)}
    )
    proc.process(20, "iperf3", 1, stime=2 * ticks)
    proc.machine(busy=5 * ticks, idle=0, steal=0)
    after = cpu.sample_cpu(roles, proc=proc.root, threads=True)
    used = cpu.cpu_seconds(before, after)
    assert used == {"sender": 3.0, "iperf3_server": 1.0, "machine": 5.0}  # "gone" left out
    assert cpu.thread_seconds(before, after)["sender"] == {"wgpy-tun": 2.0, "py": 1.0}
    assert cpu.rss_bytes(10, proc.root) == 1000 * 1024
    proc.exit(10)
    assert cpu.rss_bytes(10, proc.root) is None
    assert cpu.read_stat(10, proc.root) is None


def test_cpu_per_gb_groups_daemons_and_iperf3():
    t = measure.Throughput(
        gbps=1.0,
        received_bytes=2 * 10**9,
        seconds=16.0,
        retransmits=0,
        cpu={"sender": 4.0, "receiver": 6.0, "iperf3_client": 1.0, "iperf3_server": 1.0},
    )
    per = t.cpu_per_gb()
    assert per["daemons"] == 5.0
    assert per["sender"] == 2.0
    assert per["iperf3"] == 1.0


# --- the busy-machine refusal ------------------------------------------------------


class ScriptedMonitor:
    """Stands in for BusyMonitor: returns the given other-CPU figures in turn."""

    def __init__(self, checkpoints, quiet_windows):
        self.checkpoints = list(checkpoints)
        self.quiet_windows = list(quiet_windows)

    def restart(self):
        pass

    def checkpoint(self):
        return use_of(self.checkpoints.pop(0))

    def wait_for_quiet(self, window, timeout):
        cores = self.quiet_windows.pop(0)
        return cores <= 0.2, use_of(cores)


def use_of(cores):
    return cpu.OtherUse(
        seconds=2.0,
        cpu_seconds=2 * cores,
        steal_seconds=0,
        kernel_thread_seconds=0,
        top=[(4242, "cargo", 2 * cores)] if cores else [],
    )


def scripted_benchmark(tmp_path, checkpoints, quiet_windows):
    b = run.Benchmark(run.Options(configs=[topology.VETH]), tmp_path, lambda message: None)
    b.monitor = ScriptedMonitor(checkpoints, quiet_windows)
    return b


def test_quiet_measurement_is_taken_once(tmp_path):
    b = scripted_benchmark(tmp_path, [0.05], [])
    calls = []
    assert b.guarded("m", lambda: calls.append(1) or 7) == 7
    assert calls == [1]


def test_disturbed_measurement_is_repeated_once_when_quiet_again(tmp_path):
    b = scripted_benchmark(tmp_path, [1.5, 0.0], [0.0])
    calls = []
    assert b.guarded("m", lambda: calls.append(1) or len(calls)) == 2
    assert [c.get("attempt") for c in b.busy_checks] == [1, None, 2]


def test_disturbed_twice_is_refused(tmp_path):
    b = scripted_benchmark(tmp_path, [1.5, 0.9], [0.0])
    with pytest.raises(run.Busy, match=r"disturbed twice: 0\.90 cores .*cargo\[4242\]"):
        b.guarded("m", lambda: 1)


def test_never_quiet_is_refused(tmp_path):
    b = scripted_benchmark(tmp_path, [1.5], [0.8])
    with pytest.raises(run.Busy, match="too busy"):
        b.guarded("m", lambda: 1)
    with pytest.raises(run.Busy, match=r"too busy to measure before x: 0\.30 cores"):
        scripted_benchmark(tmp_path, [], [0.3]).require_quiet("before x")


# --- parsing tool output -----------------------------------------------------------


def test_parse_iperf_reports_iperf3_errors():
    assert measure.parse_iperf('warning\n{"end": {}}\n') == {"end": {}}
    with pytest.raises(measure.MeasurementError, match="unable to connect"):
        measure.parse_iperf('{"error": "unable to connect to server"}')
    with pytest.raises(measure.MeasurementError, match="no JSON"):
        measure.parse_iperf("iperf3: error")


def test_parse_ping_times():
    out = (
        "64 bytes from 10.200.0.2: icmp_seq=1 ttl=64 time=0.254 ms\n"
        "64 bytes from 10.200.0.2: icmp_seq=2 ttl=64 time=12.5 ms\n"
        "rtt min/avg/max/mdev = 0.254/6.377/12.500/6.123 ms\n"
    )
    assert measure.parse_ping(out) == [0.254, 12.5]


def datagrams(rate, loss):
    return measure.Datagrams(rate, 1200, rate / 9600, rate / 9600 * (1 - loss / 100), loss)


def test_sustainable_rate_is_the_highest_with_under_one_percent_loss():
    probes = [datagrams(1000, 5.0), datagrams(800, 0.99), datagrams(600, 0.1)]
    assert measure.sustainable(probes).rate_bps == 800
    assert measure.sustainable([datagrams(1000, 1.0)]) is None
    rates = measure.search_rates(50_000, 1200)
    assert rates[0] == 50_000 * 1200 * 8
    assert rates == sorted(rates, reverse=True)


def test_parse_cargo_bench_output():
    out = (
        "handshake/full          time:   [315.20 µs 318.40 µs 321.90 µs]\n"
        "SUMMARY: encrypt throughput wgpy/ring = 0.989 (target >= 0.90, ok); "
        "handshakes/s = 3108\n"
    )
    assert handshake.parse_cargo_output(out) == {
        "handshakes_per_s": 3108.0,
        "criterion_us": 318.40,
    }
    assert handshake.parse_cargo_output("error[E0061]: ...") == {}


def test_python_handshake_loop_completes_handshakes():
    result = handshake.python_loop(seconds=0.05, runs=2)
    assert result["handshakes_per_s"] > 10
    assert len(result["runs"]) == 2


def test_generated_peer_config_is_valid_wg_syntax():
    keys = memory.peer_keys(300)
    text = memory.peers_config(keys, wgpy.PrivateKey.generate().to_base64(), 51830)
    config = parse_wg_config(text)
    assert len(config.peers) == 300
    assert len({str(p.allowed_ips[0]) for p in config.peers}) == 300
    assert "[Interface]" not in memory.peers_config(keys[:2])


# --- medians, ratios, targets, Markdown and JSON -------------------------------------

GOOD = {"tcp1_gbps": [3.1, 3.3, 3.2], "tcp4_gbps": [3.6, 3.6, 3.6]}


def made_up_results(wgpy_tcp1=GOOD["tcp1_gbps"]):
    samples = {
        "veth": {"tcp1_gbps": [16.0, 15.0, 17.0]},
        "wgpy-wgpy": {
            "tcp1_gbps": wgpy_tcp1,
            "tcp4_gbps": GOOD["tcp4_gbps"],
            "udp_delivered_kpps": [150.0, None, 170.0],
            "udp_sustainable_kpps": [120.0],
            "udp_sustainable_loss_pct": [0.3],
            "cpu_daemons_s_per_gb": [4.0, 5.0, 6.0],
            "ping_idle_ms": [0.30, 0.31, 0.32],
        },
        "wggohead-wggohead": {
            "tcp1_gbps": [1.0, 1.1, 0.9],
            "tcp4_gbps": [1.3, 1.2, 1.1],
            "udp_delivered_kpps": [50.0, 50.0, 60.0],
            "udp_sustainable_kpps": [40.0],
            "cpu_daemons_s_per_gb": [10.0, 12.0, 11.0],
            "ping_idle_ms": [0.30, 0.30, 0.30],
        },
        "wggo-wggo": {"tcp1_gbps": [0.5]},
    }
    return {
        "meta": {
            "started": "2025-01-01 00:00:00 UTC",
            "cpu_model": "Test CPU",
            "cpus": 2,
            "kernel": "6.1",
            "wgpy": {"git": "abc123", "installed_older_than_source": False},
            "wireguard_go": "wireguard-go v0.0.20220316",
            "iperf3": "iperf 3.12",
        },
        "options": {
            "configs": ["veth", "wgpy-wgpy", "wggohead-wggohead", "wggo-wggo"],
            "repetitions": 3,
            "duration": 10,
            "udp_duration": 5,
            "udp_len": 1200,
        },
        "samples": samples,
        "memory": [
            {
                "impl": "wgpy",
                "peers": 1000,
                "rss_empty_bytes": 40e6,
                "rss_peers_bytes": 45e6,
                "per_peer_bytes": 5000.0,
                "setconf_seconds": 0.5,
            }
        ],
        "handshake": {"python": {"handshakes_per_s": 2900.0}, "cargo": {"error": "build | failed"}},
        "threads": {"wgpy-wgpy": {"sender": {"wgpy-tun": 1.5, "python3": 0.0}}},
    }


HEAD = "wg-go (current)↔same"


def test_medians_ratios_and_verdicts():
    results = report.summarize(made_up_results())
    assert results["medians"]["wgpy-wgpy"]["tcp1_gbps"] == 3.2
    assert results["medians"]["wgpy-wgpy"]["udp_delivered_kpps"] == 160.0
    # Ratios are against current wireguard-go, not Debian's.
    assert results["ratios"]["wgpy-wgpy"]["tcp1_gbps"] == pytest.approx(3.2)
    assert results["ratios"]["wggo-wggo"]["tcp1_gbps"] == pytest.approx(0.5)
    assert "veth" not in results["ratios"]
    verdicts = {t["target"]: (t["figure"], t["verdict"]) for t in results["targets"]}
    assert verdicts[f"TCP 1 stream, wgpy↔wgpy / {HEAD}"] == ("3.20x", "PASS")
    assert verdicts[f"CPU s/GB of both daemons (TCP 1 stream), wgpy / {HEAD}"] == (
        "0.45x",
        "PASS",
    )
    assert verdicts[f"UDP highest rate with < 1 % loss, wgpy / {HEAD}"] == ("3.00x", "PASS")
    assert verdicts["RSS of wgpy with 1,000 peers"] == ("45.0 MB", "PASS")
    assert verdicts["RSS of wgpy from minute 1 to the end of the soak"][1] == "n/a"


def test_a_ratio_below_target_is_a_miss():
    results = report.summarize(made_up_results(wgpy_tcp1=[1.0, 1.9, 1.5]))
    verdicts = {t["target"]: (t["figure"], t["verdict"]) for t in results["targets"]}
    assert verdicts[f"TCP 1 stream, wgpy↔wgpy / {HEAD}"] == ("1.50x", "MISS")


def test_without_current_wireguard_go_the_ratios_use_debians():
    results = made_up_results()
    del results["samples"]["wggohead-wggohead"]
    verdicts = {t["target"]: t["verdict"] for t in report.summarize(results)["targets"]}
    assert verdicts["TCP 1 stream, wgpy↔wgpy / wg-go (Debian)↔same"] == "PASS"
    del results["samples"]["wggo-wggo"]
    verdicts = {t["target"]: t["verdict"] for t in report.summarize(results)["targets"]}
    assert verdicts["TCP 1 stream, wgpy↔wgpy / wg-go"] == "n/a"


def test_soak_growth_verdict():
    soak = {
        "seconds": 1200,
        "handshakes_seen": 10,
        "sender": {"growth_after_warmup": 40_000.0},
        "receiver": {"growth_after_warmup": -160_000.0},
    }
    (v,) = [t for t in report.targets({}, None, soak) if "soak" in t.target]
    assert (v.figure, v.verdict) == ("160 KB over 1200 s (10 handshakes)", "MISS")
    soak["receiver"] = {"growth_after_warmup": 149_000.0}
    (v,) = [t for t in report.targets({}, None, soak) if "soak" in t.target]
    assert v.verdict == "PASS"


def test_markdown_table_and_json_files(tmp_path):
    results = report.summarize(made_up_results())
    md = report.markdown(results)
    lines = md.splitlines()
    header = f"| measurement | raw veth | wgpy↔wgpy | {HEAD} | wg-go (Debian)↔same"
    assert f"{header} | wgpy↔wgpy / {HEAD} |" in lines
    assert "| TCP, 1 stream (Gbit/s) | 16.00 | 3.20 | 1.00 | 0.50 | 3.20x |" in lines
    assert f"| TCP 1 stream, wgpy↔wgpy / {HEAD} | 3.20x | ≥ 2x | **PASS** |" in lines
    assert any(line.startswith("| wgpy | 40.0 | 45.0 | 1,000 | 5.00 |") for line in lines)
    assert "not available: build / failed" in md  # a | would break the table
    assert "| wgpy↔wgpy | sender | wgpy-tun 1.50 |" in lines
    json_path, md_path = report.write(results, tmp_path / "out", "20250101-000000")
    assert json.loads(json_path.read_text())["medians"]["wggo-wggo"]["tcp1_gbps"] == 0.5
    assert md_path.read_text() == md
    assert (tmp_path / "out" / "latest.md").read_text() == md


def test_command_line_options():
    quick = cli.options_from(cli.parse_args(["--quick"]))
    assert (quick.repetitions, quick.duration, quick.cargo) == (1, 2, False)
    assert [c.key for c in quick.configs] == [
        "veth",
        "wgpy-wgpy",
        "wggohead-wggohead",
        "wggo-wggo",
        "boringtun-boringtun",
        "wgpy-wggohead",
        "wgpy-wggo",
    ]
    full = cli.options_from(cli.parse_args([]))
    assert (full.repetitions, full.duration, full.cargo) == (3, 10, True)
    some = cli.options_from(cli.parse_args(["--only", "tcp1,ping,memory", "--skip", "memory"]))
    assert some.measurements == ("ping", "tcp1")
    with pytest.raises(ValueError, match="unknown configuration"):
        cli.options_from(cli.parse_args(["--configs", "veth,kernel"]))
    with pytest.raises(ValueError, match="unknown measurement"):
        cli.options_from(cli.parse_args(["--only", "tcp9"]))


def test_wgpy_variants_carry_their_environment_to_both_daemons(monkeypatch):
    monkeypatch.setattr(topology, "BY_KEY", dict(topology.BY_KEY))  # registered for this test
    options = cli.options_from(
        cli.parse_args(
            ["--configs", "wgpy-wgpy", "--wgpy-variant", "q2w1:WGPY_QUEUES=2,WGPY_CRYPTO_THREADS=1"]
        )
    )
    assert [c.key for c in options.configs] == ["wgpy-wgpy", "wgpy-q2w1"]
    variant = options.configs[1]
    assert (variant.sender, variant.receiver) == (topology.WGPY, topology.WGPY)
    assert variant.env == (("WGPY_QUEUES", "2"), ("WGPY_CRYPTO_THREADS", "1"))
    for bad in ("q2", "q 2:WGPY_QUEUES=2", "wgpy:WGPY_QUEUES=2"):
        with pytest.raises(ValueError):
            cli.options_from(cli.parse_args(["--wgpy-variant", bad]))


# --- in namespaces -----------------------------------------------------------------


def _our_namespaces(pid):
    return sorted(p.name for p in NETNS_DIR.glob(f"wgpyt-{pid}-*"))


def _descendants(pid):
    return cpu.descendants([cpu.snapshot()], pid) - {pid}


def _needs_namespaces():
    require_root_netns()
    require_programs("iperf3", "wg", "ping", "ss")
    require_tun()


def test_quick_run_measures_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    _needs_namespaces()
    # Other test runs may create and remove UAPI sockets meanwhile: follow only ours.
    interfaces = []
    hand_out = netns.NetnsLab.interface_name

    def recorded(lab, namespace, prefix="wgg"):
        interfaces.append(hand_out(lab, namespace, prefix))
        return interfaces[-1]

    monkeypatch.setattr(netns.NetnsLab, "interface_name", recorded)
    status = cli.main(
        [
            "--configs",
            "veth,wgpy-wgpy",
            "--only",
            "first,tcp1",
            "--duration",
            "2",
            "-n",
            "1",
            "--no-cargo",
            "--out",
            str(tmp_path),
            # This test checks the mechanics, not the figures: run even on a
            # machine busy with other tests.
            "--max-other-cpu",
            "64",
        ]
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    results = json.loads((tmp_path / "latest.json").read_text())
    veth, tunnel = results["medians"]["veth"], results["medians"]["wgpy-wgpy"]
    assert veth["tcp1_gbps"] > tunnel["tcp1_gbps"] > 0.01
    assert 0 < tunnel["cpu_daemons_s_per_gb"] < 1000
    assert 0 < tunnel["first_packet_ms"] < 5000
    assert "| TCP, 1 stream (Gbit/s) |" in (tmp_path / "latest.md").read_text()
    assert _our_namespaces(os.getpid()) == []
    assert _descendants(os.getpid()) == set()
    assert len(interfaces) == 2
    assert not [name for name in interfaces if (netns.WG_RUN_DIR / f"{name}.sock").exists()]


def test_failed_measurement_still_cleans_up(tmp_path, monkeypatch, capsys):
    _needs_namespaces()

    def broken(setup):
        assert _our_namespaces(os.getpid())  # the configuration was built
        raise measure.MeasurementError("made to fail")

    monkeypatch.setattr(measure, "first_packet", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the logs are kept
    args = ["--configs", "veth", "--only", "first", "--no-cargo", "--out", str(tmp_path)]
    status = cli.main([*args, "--max-other-cpu", "64"])
    assert status == cli.EXIT_FAILED
    assert "made to fail" in capsys.readouterr().err
    assert not (tmp_path / "latest.json").exists()
    assert list(tmp_path.glob("wgpy-bench-*/*/proc-*.log"))  # kept for a failure
    assert _our_namespaces(os.getpid()) == []
    assert _descendants(os.getpid()) == set()


def test_interrupt_cleans_up_namespaces_and_daemons(tmp_path):
    _needs_namespaces()
    argv = [sys.executable, "-m", "bench", "--configs", "wgpy-wgpy", "--only", "tcp1"]
    argv += ["--duration", "30", "--no-cargo", "--out", str(tmp_path), "--max-other-cpu", "64"]
    bench = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its kept logs go with tmp_path
    )
    try:
        # Wait until the TCP run is under way: iperf3 client and both daemons exist.
        wait_until(
            lambda: (
                sum(
                    cpu.read_stat(p) is not None and cpu.read_stat(p).comm == "iperf3"
                    for p in _descendants(bench.pid)
                )
                >= 2
            ),
            timeout=20,
            what="the benchmark's iperf3 client and server",
        )
        started = {p: cpu.read_stat(p) for p in _descendants(bench.pid)}
        assert _our_namespaces(bench.pid)
        time.sleep(0.5)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == cli.EXIT_INTERRUPTED, err
    assert _our_namespaces(bench.pid) == []
    for pid, stat in started.items():
        now = cpu.read_stat(pid)
        assert now is None or now.starttime != stat.starttime, f"{stat.comm}[{pid}] survived"
    assert not (tmp_path / "latest.json").exists()
