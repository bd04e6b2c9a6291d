"""Resident memory: a daemon with many configured peers, and the soak run.

RSS is VmRSS of the daemon process (/proc/PID/status): for wgpy the Python
interpreter with the Rust extension, for wireguard-go the Go process.
Peers are configured with `wg setconf` from a generated file (public key,
one /32 allowed IP and an endpoint each), so both implementations parse the
same UAPI input. Nothing is sent to these peers: no traffic, no keepalive.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import wgpy
from netns import NetnsLab
from wgnet import start_node, write_secret

from bench import cpu, measure, stats, topology

MEMORY_PORT = 51830


def peer_keys(count: int) -> list[str]:
    """`count` fresh public keys (base64)."""
    return [wgpy.PrivateKey.generate().public_key().to_base64() for _ in range(count)]


def peer_address(index: int) -> str:
    """A distinct /32 for peer `index` (up to 65,536 peers), outside the tunnel subnets."""
    return f"10.201.{index // 256}.{index % 256}/32"


def peers_config(public_keys: list[str], private_key: str | None = None, port: int = 0) -> str:
    """A wg(8) configuration with one [Peer] per key. With `private_key` it
    is complete (for `wg setconf`); without, peers only (for `wg addconf`)."""
    lines = []
    if private_key is not None:
        lines += ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {port}", ""]
    for i, key in enumerate(public_keys):
        # Endpoints are made-up addresses that nothing is ever sent to.
        endpoint = f"10.202.{i // 256}.{i % 256}:{51820 + i % 1000}"
        lines += ["[Peer]", f"PublicKey = {key}", f"AllowedIPs = {peer_address(i)}"]
        lines += [f"Endpoint = {endpoint}", ""]
    return "\n".join(lines)


def settled_rss(pid: int, samples: int = 5, interval: float = 0.4) -> int:
    """The highest of a few RSS readings taken `interval` s apart."""
    readings = []
    for _ in range(samples):
        time.sleep(interval)
        value = cpu.rss_bytes(pid)
        if value is None:
            raise measure.MeasurementError(f"process {pid} exited while its RSS was measured")
        readings.append(value)
    return max(readings)


def rss_with_peers(lab: NetnsLab, impl: str, keys: list[str]) -> dict[str, Any]:
    """RSS of a fresh `impl` daemon before and after `wg setconf` of len(keys) peers."""
    ns = lab.namespace()
    node = start_node(
        lab, ns, impl, port=MEMORY_PORT, addresses=[], log_level=topology.DAEMON_LOG_LEVEL
    )
    empty = settled_rss(node.process.pid)
    conf = lab.work_dir / f"{node.iface}-peers.conf"
    write_secret(conf, peers_config(keys, node.private_key.to_base64(), MEMORY_PORT))
    start = time.monotonic()
    ns.run(["wg", "setconf", node.iface, str(conf)], timeout=120)
    setconf_seconds = time.monotonic() - start
    configured = len(node.wg("show", node.iface, "peers").split())
    full = settled_rss(node.process.pid)
    return {
        "impl": impl,
        "peers": configured,
        "rss_empty_bytes": empty,
        "rss_peers_bytes": full,
        "per_peer_bytes": (full - empty) / configured if configured else None,
        "setconf_seconds": setconf_seconds,
    }


def soak(
    lab: NetnsLab,
    seconds: int,
    interval: float,
    extra_peers: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """wgpy↔wgpy carrying TCP both ways for `seconds`, side a also holding
    `extra_peers` idle peers; RSS of both daemons every `interval` s.

    Rekeys happen on their own (REKEY_AFTER_TIME, 120 s), so a 600 s run sees
    about five; the handshakes seen are counted from `wg show latest-handshakes`.
    The first minute (a tenth of a shorter run) is warm-up and not judged;
    `growth_after_warmup` is how far RSS moved from then to the end (medians
    of five samples at each end, so one sample's noise does not decide).
    """
    setup = topology.build(lab, topology.WGPY_WGPY)
    assert setup.pair is not None
    a, b = setup.pair.a, setup.pair.b
    if extra_peers:
        conf = write_secret(lab.work_dir / "soak-peers.conf", peers_config(peer_keys(extra_peers)))
        a.ns.run(["wg", "addconf", a.iface, str(conf)], timeout=120)
    server = measure.start_iperf_server(setup)
    load = setup.client.spawn(measure.iperf_argv(setup, seconds, ["--bidir"]))
    warmup = min(60.0, seconds / 10)
    samples: list[dict[str, float]] = []
    handshakes: set[int] = set()
    start = time.monotonic()
    try:
        while (done := measure.poll_tracked(load)) is None:
            t = time.monotonic() - start
            rss_a, rss_b = cpu.rss_bytes(a.process.pid), cpu.rss_bytes(b.process.pid)
            if rss_a is None or rss_b is None:
                raise measure.MeasurementError("a wgpy daemon exited during the soak")
            samples.append({"t": t, "sender": rss_a, "receiver": rss_b})
            for line in a.wg("show", a.iface, "latest-handshakes").splitlines():
                key, _, stamp = line.partition("\t")
                if key == b.public_key.to_base64() and stamp.strip() not in ("", "0"):
                    handshakes.add(int(stamp))
            if len(samples) % max(1, int(60 / interval)) == 0:
                progress(f"soak {t:.0f}/{seconds} s: RSS {rss_a / 2**20:.1f} MiB")
            time.sleep(interval)
    finally:
        server.stop()
    end = measure.parse_iperf(done.output)["end"]
    judged = [s for s in samples if s["t"] >= warmup]
    result: dict[str, Any] = {
        "seconds": seconds,
        "interval": interval,
        "extra_peers": extra_peers,
        "warmup_seconds": warmup,
        "handshakes_seen": len(handshakes),
        "traffic_gb": sum(
            end.get(key, {}).get("bytes", 0)
            for key in ("sum_received", "sum_received_bidir_reverse")
        )
        / measure.GIGA,
        "samples": samples,
    }
    for role in ("sender", "receiver"):
        values = [s[role] for s in judged]
        result[role] = {
            "rss_min_bytes": min(values, default=None),
            "rss_max_bytes": max(values, default=None),
            "rss_median_bytes": statistics.median(values) if values else None,
            "spread": stats.spread(values),
            "growth_after_warmup": (
                statistics.median(values[-5:]) - statistics.median(values[:5])
                if len(values) >= 10
                else None
            ),
        }
    return result
