"""A moving client for handover tests and the handover benchmark .

Three namespaces: the client has two uplinks (two veth pairs, two subnets) to
a router, which forwards to the server's subnet. The client runs a WireGuard
node (wgpy or wireguard-go) whose peer is the server's node; the router
drops packets whose source does not belong to the link they came in on
(rp_filter=1, as an access network does).

    client ==uplink 1: 10.31.1.0/24== router ==10.31.9.0/24== server
           ==uplink 2: 10.31.2.0/24==

A handover is one of three scenarios, done by the client's `ip` commands,
each alternating between two states so that one lab serves several runs:

- make-before-break: the new uplink gets its address and the default route,
  then (STEP_GAP later) the old address is removed;
- break-before-make: the old uplink goes down; DOWN_TIME later the new
  uplink comes up and gets the default route;
- address-change: uplink 1 gets a second address of its subnet, then the old
  one is removed (promote_secondaries keeps the subnet and default routes).

The moment of the switch (`Switch.done`) is when the last command returned:
the old path is gone and the new one usable. What is measured around it:

- a downlink-only UDP stream (server -> client, 200 packets/s, sequence
  numbers and times): how long after the switch it flows again for good (no
  gap over 100 ms until the end of the window);
- the same uplink (client -> server, 50 packets/s): resume time, and how many
  packets sent while no path existed were lost (wgpy holds them);
- a paced TCP stream server -> client through the tunnel, one connection per
  run: its content (SHA-256) and its longest stall;
- how soon the server's `wg show` reports the client's new endpoint.

All times are CLOCK_MONOTONIC, which every namespace shares.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netns import BackgroundProcess, Namespace, NetnsLab, wait_until
from transfer import start_tcp_transfer
from wgnet import Node, endpoint_text, start_node

MAKE_BEFORE_BREAK = "make-before-break"
BREAK_BEFORE_MAKE = "break-before-make"
ADDRESS_CHANGE = "address-change"
SCENARIOS = (MAKE_BEFORE_BREAK, BREAK_BEFORE_MAKE, ADDRESS_CHANGE)

CLIENT_UPLINK = ("10.31.1.2", "10.31.2.2")
ROUTER_UPLINK = ("10.31.1.1", "10.31.2.1")
CLIENT_ALTERNATE = "10.31.1.12"  # address-change: uplink 1's other address
ROUTER_LAN, SERVER_LAN = "10.31.9.1", "10.31.9.2"
SERVER_TUNNEL, CLIENT_TUNNEL = "10.32.0.1", "10.32.0.2"
SERVER_PORT, CLIENT_PORT = 51820, 51821
DOWNLINK_PORT, UPLINK_PORT, TCP_PORT = 6000, 6001, 5300

DOWNLINK_RATE = 200.0  # packets per second
UPLINK_RATE = 50.0
STEP_GAP = 0.5  # make-before-break: new path ready -> old one removed
DOWN_TIME = 1.0  # break-before-make: old link down -> new one up
RESUMED_GAP = 0.1  # a stream has resumed once no gap longer than this follows
TCP_PACE = 0.02  # seconds between the sender's 64 KiB blocks (about 3 MB/s)
TCP_BLOCK = 32 + 32 * 2048  # transfer.SENDER's block size
PROBE = str(Path(__file__).resolve().parent / "handover_probe.py")


@dataclass
class Switch:
    """One handover: when it began, when the new path was usable, and the
    client's new address."""

    began: float
    done: float
    new_address: str


@dataclass
class RunResult:
    """One handover; None where that stream was not measured. Times in seconds."""

    scenario: str
    run: int
    switch: Switch
    downlink_resume: float | None  # after the switch; also None: not within the window
    downlink_outage: float | None  # the longest gap around the switch
    uplink_resume: float | None
    uplink_lost: int | None  # uplink packets sent while the switch went on, never received
    tcp_intact: bool | None  # the run's TCP connection delivered everything, unaltered
    tcp_stall: float | None  # its longest stall
    endpoint_after: float | None  # until the server showed the new endpoint
    endpoint_seen: str  # the endpoint the server showed last

    @property
    def tcp_stall_after_path(self) -> float | None:
        """The TCP stall less the time no path existed at all (break-before-make:
        from the old link going down to the new one up): how long TCP took
        once the new path was usable."""
        if self.tcp_stall is None:
            return None
        no_path = self.switch.done - self.switch.began if self.scenario == BREAK_BEFORE_MAKE else 0
        return max(0.0, self.tcp_stall - no_path)


@dataclass
class HandoverLab:
    lab: NetnsLab
    scenario: str
    client_ns: Namespace
    router_ns: Namespace
    server_ns: Namespace
    uplinks: tuple[str, str]  # the client's ends of the two uplinks
    client: Node
    server: Node
    active: int = 0  # the uplink in use
    address: str = CLIENT_UPLINK[0]  # the client's address in use
    probes: list[BackgroundProcess] = field(default_factory=list)

    # --- the handover itself ----------------------------------------------

    def _ip(self, *args: str) -> None:
        self.client_ns.ip(*args)

    def _default_via(self, uplink: int) -> None:
        gateway, dev = ROUTER_UPLINK[uplink], self.uplinks[uplink]

        def added() -> bool:
            r = self.client_ns.ip(
                "route", "replace", "default", "via", gateway, "dev", dev, check=False
            )
            return r.returncode == 0

        wait_until(added, timeout=5, what=f"default route via {dev}", interval=0.005)

    def switch(self) -> Switch:
        """Does the lab's scenario once, towards the other state."""
        old, new = self.active, 1 - self.active
        began = time.monotonic()
        if self.scenario == MAKE_BEFORE_BREAK:
            self._ip("address", "add", f"{CLIENT_UPLINK[new]}/24", "dev", self.uplinks[new])
            self._default_via(new)
            time.sleep(STEP_GAP)
            self._ip("address", "del", f"{CLIENT_UPLINK[old]}/24", "dev", self.uplinks[old])
            self.active, self.address = new, CLIENT_UPLINK[new]
        elif self.scenario == BREAK_BEFORE_MAKE:
            self._ip("link", "set", self.uplinks[old], "down")
            time.sleep(DOWN_TIME)
            self._ip("link", "set", self.uplinks[new], "up")
            self._default_via(new)
            self.active, self.address = new, CLIENT_UPLINK[new]
        else:
            new_address = CLIENT_ALTERNATE if self.address == CLIENT_UPLINK[0] else CLIENT_UPLINK[0]
            self._ip("address", "add", f"{new_address}/24", "dev", self.uplinks[0])
            self._ip("address", "del", f"{self.address}/24", "dev", self.uplinks[0])
            self.address = new_address
        done = time.monotonic()
        if self.scenario == ADDRESS_CHANGE:
            # Deleting the primary address drops the default route on some
            # kernels even with promote_secondaries: put it back if so.
            routes = self.client_ns.ip("route", "show", "default").stdout
            if not routes.strip():
                self._default_via(0)
                done = time.monotonic()
        return Switch(began, done, self.address)

    # --- measuring ----------------------------------------------------------

    def start_probe(
        self,
        sender: Namespace,
        receiver: Namespace,
        address: str,
        port: int,
        rate: float,
        seconds: float,
    ) -> tuple[BackgroundProcess, BackgroundProcess]:
        rx = receiver.spawn([sys.executable, PROBE, "recv", address, str(port), str(seconds)])
        wait_until(lambda: "ready" in rx.log(), timeout=10, what="probe receiver ready")
        tx = sender.spawn(
            [sys.executable, PROBE, "send", address, str(port), str(rate), str(seconds)]
        )
        self.probes += [rx, tx]
        return rx, tx

    def server_endpoint(self) -> str:
        return self.server.peer_dump(self.client.public_key).endpoint


def build(
    lab: NetnsLab,
    scenario: str,
    *,
    client_impl: str,
    server_impl: str,
    keepalive: int = 0,
    client_env: dict[str, str] | None = None,
) -> HandoverLab:
    """The three namespaces, both nodes up and a completed handshake."""
    client_ns, router_ns, server_ns = lab.namespace(), lab.namespace(), lab.namespace()
    for sysctl in (
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
    ):
        router_ns.run(["sysctl", "-q", "-w", sysctl])
    client_ns.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.promote_secondaries=1"])
    client_ns.run(["sysctl", "-q", "-w", "net.ipv4.conf.default.promote_secondaries=1"])
    up1 = lab.veth(client_ns, router_ns, [f"{CLIENT_UPLINK[0]}/24"], [f"{ROUTER_UPLINK[0]}/24"])
    if scenario == MAKE_BEFORE_BREAK:
        up2 = lab.veth(client_ns, router_ns, [], [f"{ROUTER_UPLINK[1]}/24"])
    else:
        up2 = lab.veth(client_ns, router_ns, [f"{CLIENT_UPLINK[1]}/24"], [f"{ROUTER_UPLINK[1]}/24"])
        client_ns.ip("link", "set", up2.a_ifname, "down")
    for pair in (up1, up2):
        client_ns.run(
            ["sysctl", "-q", "-w", f"net.ipv4.conf.{pair.a_ifname}.promote_secondaries=1"]
        )
    lab.veth(router_ns, server_ns, [f"{ROUTER_LAN}/24"], [f"{SERVER_LAN}/24"])
    client_ns.ip("route", "add", "default", "via", ROUTER_UPLINK[0], "dev", up1.a_ifname)
    server_ns.ip("route", "add", "default", "via", ROUTER_LAN)

    server = start_node(
        lab, server_ns, server_impl, port=SERVER_PORT, addresses=[f"{SERVER_TUNNEL}/24"]
    )
    client = _start_client(lab, client_ns, client_impl, client_env)
    server.set_peer(client, [f"{CLIENT_TUNNEL}/32"])
    client.set_peer(
        server, [f"{SERVER_TUNNEL}/32"], endpoint=(SERVER_LAN, SERVER_PORT), keepalive=keepalive
    )
    h = HandoverLab(
        lab, scenario, client_ns, router_ns, server_ns, (up1.a_ifname, up2.a_ifname), client, server
    )
    if not client.ping(SERVER_TUNNEL, count=2, timeout=2):
        raise AssertionError(f"no tunnel before the handover\n{lab.logs()}")
    return h


def _start_client(lab: NetnsLab, ns: Namespace, impl: str, env: dict[str, str] | None) -> Node:
    """start_node, with `env` set for the daemon it spawns."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return start_node(lab, ns, impl, port=CLIENT_PORT, addresses=[f"{CLIENT_TUNNEL}/24"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- analysis ------------------------------------------------------------------


def resume_after(
    arrivals: Sequence[float], at: float, until: float, gap: float = RESUMED_GAP
) -> float | None:
    """Seconds from `at` to the first arrival after which the stream flows
    without a gap longer than `gap` up to `until`; None if it does not."""
    ts = sorted(t for t in arrivals if at <= t <= until)
    if not ts or until - ts[-1] > gap:
        return None
    start = ts[0]
    for a, b in itertools.pairwise(ts):
        if b - a > gap:
            start = b
    return start - at


def longest_gap(arrivals: Sequence[float], start: float, end: float) -> float:
    ts = [start, *sorted(t for t in arrivals if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(ts))


Arrival = tuple[int, float, float]  # sequence number, sent, arrived


def probe_arrivals(rx: BackgroundProcess) -> list[Arrival]:
    """What a probe receiver has logged so far."""
    out: list[Arrival] = []
    for line in rx.log().splitlines():
        f = line.split()
        if len(f) == 3:
            out.append((int(f[0]), float(f[1]), float(f[2])))
    return out


def lost_between(arrivals: Sequence[Arrival], rate: float, start: float, end: float) -> int:
    """Packets the sender sent in [start, end] (by its steady rate) that never arrived."""
    if not arrivals:
        return -1
    seq0, t0, _ = min(arrivals)
    first = seq0 + max(0, round((start - t0) * rate))
    last = seq0 + round((end - t0) * rate)
    got = {a[0] for a in arrivals}
    return sum(1 for seq in range(first, last + 1) if seq not in got)


def _recovered(rx: BackgroundProcess | None, sw: Switch, now: float) -> bool:
    """The stream (if measured) has flowed for 0.5 s since it resumed after the switch."""
    if rx is None:
        return True
    arrived = [a[2] for a in probe_arrivals(rx)]
    resumed = resume_after(arrived, sw.done, now)
    return resumed is not None and now - (sw.done + resumed) >= 0.5


def run_handovers(
    h: HandoverLab,
    runs: int,
    *,
    downlink: bool = True,
    uplink: bool = False,
    tcp: bool = False,
    before: float = 1.0,
    after: float = 1.5,
    max_after: float = 1.5,
) -> list[RunResult]:
    """`runs` handovers in a row on one lab, measuring the chosen streams:
    the downlink and uplink UDP probes run throughout, the TCP stream is one
    connection per run. Each run is measured from `before` seconds before its
    switch to at least `after` seconds after it, and longer (up to
    `max_after`) until every measured stream has recovered and the server
    shows the new endpoint. Measure the downlink alone to see whether the
    client re-announces itself: any uplink traffic would do it too."""
    down_rx = up_rx = None
    if downlink:
        down_rx, _ = h.start_probe(
            h.server_ns, h.client_ns, CLIENT_TUNNEL, DOWNLINK_PORT, DOWNLINK_RATE, 3600
        )
    if uplink:
        up_rx, _ = h.start_probe(
            h.client_ns, h.server_ns, SERVER_TUNNEL, UPLINK_PORT, UPLINK_RATE, 3600
        )
    rate = TCP_BLOCK / TCP_PACE
    switching = {MAKE_BEFORE_BREAK: STEP_GAP, BREAK_BEFORE_MAKE: DOWN_TIME}.get(h.scenario, 0.0)
    windows: list[tuple[Switch, float, bool | None, float | None, float | None, str]] = []
    time.sleep(0.3)  # the streams get going
    for run in range(runs):
        total = int(rate * (before + switching + after))  # lasts the window if nothing stalls
        job = None
        if tcp:
            job = start_tcp_transfer(
                h.server_ns,
                h.client_ns,
                CLIENT_TUNNEL,
                total,
                port=TCP_PORT + run,
                pace=TCP_PACE,
                timeout=max_after + 30,
            )
        time.sleep(before)
        sw = h.switch()
        expected = endpoint_text(sw.new_address, CLIENT_PORT)
        endpoint_after: float | None = None
        seen = ""
        while True:
            now = time.monotonic()
            if endpoint_after is None:
                seen = h.server_endpoint()
                if seen == expected:
                    endpoint_after = time.monotonic() - sw.done
            if now - sw.done >= max_after:
                break
            if (
                now - sw.done >= after
                and endpoint_after is not None
                and (job is None or not (job.sender.alive() or job.receiver.alive()))
                and _recovered(down_rx, sw, now)
                and _recovered(up_rx, sw, now)
            ):
                break
            time.sleep(0.02)
        until = time.monotonic()
        intact: bool | None = None
        stall: float | None = None
        if job is not None:
            intact, stall = False, float("inf")
            try:
                r = job.finish()
                intact = r.received_sha256 == r.sent_sha256 and r.received_bytes == total
                stall = r.longest_gap
            except Exception:  # it did not finish: the connection did not survive
                job.sender.stop()
                job.receiver.stop()
        windows.append((sw, until, intact, stall, endpoint_after, seen))
    for p in h.probes:
        p.stop()
    down = [a[2] for a in probe_arrivals(down_rx)] if down_rx is not None else None
    up = probe_arrivals(up_rx) if up_rx is not None else None
    h.probes.clear()
    results = []
    for run, (sw, until, intact, stall, endpoint_after, seen) in enumerate(windows):
        results.append(
            RunResult(
                scenario=h.scenario,
                run=run,
                switch=sw,
                downlink_resume=resume_after(down, sw.done, until) if down is not None else None,
                downlink_outage=longest_gap(down, sw.began - 0.2, until)
                if down is not None
                else None,
                uplink_resume=resume_after([a[2] for a in up], sw.done, until)
                if up is not None
                else None,
                uplink_lost=lost_between(up, UPLINK_RATE, sw.began, sw.done)
                if up is not None
                else None,
                tcp_intact=intact,
                tcp_stall=stall,
                endpoint_after=endpoint_after,
                endpoint_seen=seen,
            )
        )
    return results


def median(values: Sequence[float | None]) -> float | None:
    """The median, where None (never) counts as infinitely long."""
    if not values:
        return None
    m = statistics.median([float("inf") if v is None else v for v in values])
    return None if m == float("inf") else m


def _fmt(v: float | bool | int | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.3f}"
    return str(v)


def table(results: list[RunResult]) -> str:
    """One line per run, for failure reports and the benchmark."""
    cols = (
        "run downlink_resume downlink_outage uplink_resume uplink_lost "
        "tcp_intact tcp_stall tcp_after_path endpoint_after endpoint_seen"
    ).split()
    lines = ["  ".join(cols)]
    for r in results:
        values = [
            r.run,
            r.downlink_resume,
            r.downlink_outage,
            r.uplink_resume,
            r.uplink_lost,
            r.tcp_intact,
            r.tcp_stall,
            r.tcp_stall_after_path,
            r.endpoint_after,
        ]
        lines.append("  ".join(_fmt(v) for v in values) + f"  {r.endpoint_seen}")
    return "\n".join(lines)
