"""`python3 -m bench.registry`: from a registry write to every gateway
applying it, for 1, 100 and 10,000 peers (issue 16).

One lab (tests/registry_lab.py: etcd and three wgpy gateways in network
namespaces). For each size, N new peers are written as `wgpy registry`
writes them (wgpy.registry.admin, in this process, inside the hub
namespace: one transaction per peer, 16 at a time, so the time of the last
commit is known without a command's start-up), then one more single peer
(the latency of one write with that many peers in the registry). Each
gateway logs every batch it applies with the etcd revision and the time
(`revision R applied ... (at T)`); a gateway has applied the write at the
first batch whose revision reaches the store's revision after the write.
Figures: the write's duration, the time from the end of the write (and
from its start) to the last gateway applying it, and the same for the
single write after it; medians over --runs runs (each run adds new peers
on top of the previous ones).

Exit status: 0 measured, 2 missing precondition.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from netns import NetnsLab, remove_stale_namespaces, root_netns_unavailable_reason
from registry_lab import NETWORK, RegistryLab, build, random_peers
from wgpy.registry.admin import RegistryAdmin
from wgpy.registry.config import parse_etcd_url
from wgpy.registry.etcd import EtcdClient
from wgpy.registry.layout import entry_from_dict

APPLIED = re.compile(r"revision (\d+) applied: .* \(at ([0-9.]+)\)")


def applied_at(lab: RegistryLab, revision: int, timeout: float = 120.0) -> float:
    """The wall-clock time the last gateway applied `revision`."""
    deadline = time.monotonic() + timeout
    times = []
    for gateway in lab.gateways:
        while True:
            found = [
                float(t) for r, t in APPLIED.findall(gateway.process.log()) if int(r) >= revision
            ]
            if found:
                times.append(min(found))
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gateway.iface} did not apply revision {revision}")
            time.sleep(0.05)
    return max(times)


def write(lab: RegistryLab, peers: list[dict[str, object]]) -> tuple[float, float]:
    """Writes `peers`; (wall-clock start, end of the last commit)."""
    entries = [entry_from_dict(p) for p in peers]

    async def main() -> tuple[float, float]:
        target = parse_etcd_url(lab.url)
        async with EtcdClient(target.endpoints[0], target) as client:
            admin = RegistryAdmin(client, NETWORK)
            start = time.time()
            if len(entries) == 1:
                await admin.put_peer(entries[0])
            else:
                results = await admin.import_peers(entries)
                assert all(r == "added" for r in results), results[:3]
            return start, time.time()

    with lab.hub.entered():  # the sockets are made in the hub, where etcd is
        return trio.run(main)


def measure(lab: RegistryLab, size: int, octet: int) -> dict[str, float]:
    start, end = write(lab, random_peers(size, octet))
    done = applied_at(lab, lab.etcd.revision())
    _, one_end = write(lab, random_peers(1, octet + 1 + size // 62500))
    one_done = applied_at(lab, lab.etcd.revision())
    return {
        "write_s": end - start,
        "after_write_s": done - end,
        "after_start_s": done - start,
        "one_more_s": one_done - one_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.registry", description=__doc__)
    parser.add_argument("--sizes", default="1,100,10000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    reason = root_netns_unavailable_reason()
    if reason is not None:
        print(f"bench.registry: {reason}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    remove_stale_namespaces()
    results: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="wgpy-bench-registry-") as work:
        netns_lab = NetnsLab(Path(work))
        lab = None
        try:
            lab = build(Path(work), netns_lab)
            octet = 120
            for _ in range(args.runs):
                for size in sizes:
                    results[size].append(measure(lab, size, octet))
                    octet += 2 + 2 * (size // 62500)
            total = len(lab.listed())
        finally:
            if lab is not None:
                lab.etcd.cleanup()
            netns_lab.cleanup()
    print(f"Registry write to all 3 gateways applied (medians of {args.runs}; {total} peers)\n")
    print(
        "| peers written | write (s) | last write → all applied (s) "
        "| first write → all applied (s) | then one more peer: write → all applied (s) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for size, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {size:,} | {m['write_s']:.3f} | {m['after_write_s']:.3f} "
            f"| {m['after_start_s']:.3f} | {m['one_more_s']:.3f} |"
        )
    print("\n" + json.dumps({str(k): v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
