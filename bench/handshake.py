"""Handshakes per second on one core, two ways.

- `python_loop`: the installed wgpy module (the one the daemons run), driven
  through its sans-I/O API from one Python thread: create_initiation,
  open_initiation + respond, consume_response, with a preshared key. One
  "handshake" is both sides' work, as in the Rust benchmark.
- `cargo_bench`: `cargo bench --bench crypto` (bench/crypto.rs) on the
  working tree's Rust core, without Python; its SUMMARY line gives
  handshakes/s and criterion gives the time per handshake.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import wgpy


def python_loop(seconds: float = 1.0, runs: int = 3) -> dict[str, Any]:
    """Median handshakes/s over `runs` timed runs of `seconds` each."""
    initiator_key, responder_key = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    psk = wgpy.PresharedKey.generate()
    # The responder rejects initiations that come too fast or with an old
    # timestamp; a manual clock moved 1 s per handshake keeps every one valid.
    clock = wgpy.ManualClock()
    initiator = wgpy.Handshake(initiator_key, responder_key.public_key(), psk, clock=clock)
    responder = wgpy.Handshake(responder_key, initiator_key.public_key(), psk, clock=clock)
    rates = []
    for _ in range(runs):
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            clock.advance(1.0)
            initiation = initiator.create_initiation()
            response, _ = responder.respond(wgpy.open_initiation(responder_key, initiation))
            initiator.consume_response(response)
            count += 1
        rates.append(count / elapsed)
    return {"handshakes_per_s": statistics.median(rates), "runs": rates}


SUMMARY = re.compile(r"SUMMARY:.*handshakes/s = ([0-9.]+)")
CRITERION = re.compile(r"handshake/full\s+time:\s+\[\S+ \S+ ([0-9.]+) (\S+)")
UNIT_US = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def parse_cargo_output(output: str) -> dict[str, Any]:
    """Handshakes/s from the SUMMARY line and criterion's median time, if printed."""
    result: dict[str, Any] = {}
    if m := SUMMARY.search(output):
        result["handshakes_per_s"] = float(m.group(1))
    if (m := CRITERION.search(output)) and m.group(2) in UNIT_US:
        result["criterion_us"] = float(m.group(1)) * UNIT_US[m.group(2)]
    return result


def cargo_bench(repo: Path, timeout: float = 900.0) -> dict[str, Any]:
    """Run the criterion handshake benchmark (quick settings); never raises:
    a build failure (for instance work in progress in rust/src) is recorded."""
    argv = ["cargo", "bench", "--bench", "crypto", "--"]
    argv += ["--warm-up-time", "1", "--measurement-time", "2", "handshake/"]
    try:
        done = subprocess.run(
            argv,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{' '.join(argv)}: {exc}"}
    output = done.stdout + done.stderr
    result = parse_cargo_output(output)
    if done.returncode != 0 or "handshakes_per_s" not in result:
        tail = "\n".join(output.strip().splitlines()[-5:])
        return {"error": f"{' '.join(argv)} exited {done.returncode}: {tail}"}
    result["command"] = " ".join(argv)
    return result
