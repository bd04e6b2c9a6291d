"""`python3 -m bench`: options, preconditions, signals, exit status.

Exit status: 0 measured and reported (targets may still MISS, unless
--check), 1 a measurement failed, 2 bad usage or a missing precondition,
3 refused because the machine was too busy, 4 --check and a target missed,
130 interrupted. Namespaces and processes are removed in every case.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType

from netns import remove_stale_namespaces, root_netns_unavailable_reason

from bench import report, topology
from bench.measure import MeasurementError
from bench.run import MEASUREMENTS, Benchmark, Busy, Options

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_MISSED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="wgpy against wireguard-go and the raw veth, in network namespaces.",
    )
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition, no cargo bench")
    p.add_argument("-n", "--repetitions", type=int, help="repetitions (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per TCP run (default 10; quick 2)")
    p.add_argument(
        "--configs",
        default=",".join(c.key for c in topology.CONFIGS),
        help="comma-separated subset of: %(default)s",
    )
    p.add_argument(
        "--wgpy-variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,...]",
        help="also measure wgpy↔wgpy with these daemon environment variables, as "
        "configuration wgpy-NAME (repeatable; e.g. q2:WGPY_QUEUES=2)",
    )
    p.add_argument("--udp-len", type=int, default=1200, help="UDP payload bytes (default 1200)")
    p.add_argument("--ping-count", type=int, help="idle pings, 10 ms apart (default 200)")
    p.add_argument("--peers", type=int, default=1000, help="peers in the memory test")
    p.add_argument("--only", help=f"comma-separated subset of: {','.join(MEASUREMENTS)}")
    p.add_argument("--skip", default="", help="comma-separated measurements to leave out")
    cargo = p.add_mutually_exclusive_group()
    cargo.add_argument("--cargo", action="store_true", help="run cargo bench even with --quick")
    cargo.add_argument("--no-cargo", action="store_true", help="skip cargo bench")
    p.add_argument("--soak", type=int, default=0, metavar="SECONDS", help="also run the soak")
    p.add_argument("--soak-interval", type=float, default=5.0, help="RSS sampling period")
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.2,
        metavar="CORES",
        help="refuse when other processes use more than this many cores (default 0.2)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON and Markdown")
    p.add_argument("--keep-work", action="store_true", help="keep process logs even on success")
    p.add_argument("--check", action="store_true", help=f"exit {EXIT_MISSED} if a target is missed")
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    keys = _names(args.configs)
    keys += [topology.add_variant(spec).key for spec in args.wgpy_variant]
    unknown = [k for k in keys if k not in topology.BY_KEY]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; known: {list(topology.BY_KEY)}")
    configs = [topology.BY_KEY[k] for k in keys]
    only = _names(args.only) if args.only else list(MEASUREMENTS)
    skip = _names(args.skip)
    unknown = [m for m in only + skip if m not in MEASUREMENTS]
    if unknown:
        raise ValueError(f"unknown measurement(s) {unknown}; known: {list(MEASUREMENTS)}")
    return Options(
        configs=configs,
        measurements=tuple(m for m in MEASUREMENTS if m in only and m not in skip),
        repetitions=args.repetitions or (1 if args.quick else 3),
        duration=args.duration or (2 if args.quick else 10),
        udp_len=args.udp_len,
        ping_count=args.ping_count or (100 if args.quick else 200),
        peers=args.peers,
        cargo=args.cargo or not (args.quick or args.no_cargo),
        soak=args.soak,
        soak_interval=args.soak_interval,
        max_other_cpu=args.max_other_cpu,
        quiet_wait=args.quiet_wait,
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def preconditions(options: Options) -> list[str]:
    """What prevents the run; configurations whose programs are missing are dropped."""
    problems = []
    reason = root_netns_unavailable_reason()
    if reason:
        problems.append(reason)
    for program in ("iperf3", "ping", "ss"):
        if shutil.which(program) is None:
            problems.append(f"{program} is not installed")
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        problems.append(f"/dev/net/tun is not usable: {exc}")
    if options.repetitions < 1 or options.duration < 1:
        problems.append("--repetitions and --duration must be at least 1")
    return problems


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for config in list(options.configs):
        missing = topology.missing_programs(config)
        if missing:
            print(f"bench: skipping {config.label}: {', '.join(missing)} not installed")
            options.configs.remove(config)
    problems = preconditions(options)
    if not options.configs:
        problems.append("no configuration left to measure")
    if problems:
        print("bench: cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_USAGE

    def log(message: str) -> None:
        print(message, flush=True)

    # Cleanup runs for SIGTERM as for Ctrl-C.
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    remove_stale_namespaces()
    work_dir = Path(tempfile.mkdtemp(prefix="wgpy-bench-"))
    bench = Benchmark(options, work_dir, log)
    status = EXIT_FAILED
    try:
        results = report.summarize(bench.run())
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        json_path, md_path = report.write(results, args.out, stamp)
        print()
        print(report.markdown(results))
        print(f"wrote {json_path} and {md_path}")
        if results["meta"]["wgpy"]["installed_older_than_source"]:
            print(
                "note: the installed wgpy module is older than rust/src: the figures are for "
                "the last installed build (pip install . to measure the working tree)"
            )
        missed = [t for t in results["targets"] if t["verdict"] == "MISS"]
        status = EXIT_MISSED if args.check and missed else 0
    except Busy as exc:
        print(f"bench: REFUSED, not reporting: {exc}", file=sys.stderr)
        status = EXIT_BUSY
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        status = EXIT_INTERRUPTED
    except MeasurementError as exc:
        print(f"bench: measurement failed: {exc}", file=sys.stderr)
    except Exception:
        # Anything else is a bug or a broken setup: show where, then clean up.
        traceback.print_exc()
        print("bench: failed", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            bench.cleanup()
        except RuntimeError as exc:
            print(f"bench: cleanup incomplete: {exc}", file=sys.stderr)
            status = status or EXIT_FAILED
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
        # Logs help only when something failed; a refusal measured nothing.
        if status in (0, EXIT_BUSY, EXIT_MISSED) and not args.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"process logs kept in {work_dir}", file=sys.stderr)
    return status
