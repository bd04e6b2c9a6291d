"""Seamless handover: the tunnel survives an underlay change.

A wgpy client with two uplinks changes its underlay under traffic, against a
wireguard-go server and a wgpy server (topology, scenarios and measurements:
handover_lab.py). For each scenario, 5 handovers measured with only a
downlink UDP stream (so nothing but wgpy's re-announcement can tell the
server), then 5 with a long-lived TCP stream (one connection per handover)
and an uplink UDP stream.

Besides, through the embedding API in this process: the events and the
holding of packets while no route exists; and a control run without
handover, which must stay broken (so the measurements can fail).
"""

from __future__ import annotations

import json
import sys

import pytest
import trio
import wgpy
from handover_lab import (
    BREAK_BEFORE_MAKE,
    CLIENT_PORT,
    CLIENT_UPLINK,
    SCENARIOS,
    HandoverLab,
    build,
    median,
    resume_after,
    run_handovers,
    table,
)
from netns import NetnsLab, entered_netns, require_programs, require_tun
from wgnet import WGPY, WIREGUARD_GO

RUNS = 5
BEFORE, AFTER = 0.4, 0.8  # seconds measured before and (at least) after each switch
RESUME_MEDIAN, RESUME_MAX = 0.2, 1.0  # downlink-only UDP, after the new path is usable
STALL_MEDIAN = 1.0  # TCP, once the new path is usable
ENDPOINT_MAX = 0.5  # the server's `wg show` has the new endpoint this soon


@pytest.fixture(autouse=True)
def _needs_tools() -> None:
    require_programs("wireguard-go", "wg", "ping", "ss")
    require_tun()


def _client_state(h: HandoverLab) -> dict:
    out = h.client_ns.run([sys.executable, "-m", "wgpy", "show", h.client.iface, "--json"])
    return json.loads(out.stdout)["interfaces"][0]


@pytest.mark.parametrize("server_impl", [WIREGUARD_GO, WGPY])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tunnel_survives_handover(netns_lab: NetnsLab, scenario: str, server_impl: str) -> None:
    h = build(netns_lab, scenario, client_impl=WGPY, server_impl=server_impl)
    window = {"before": BEFORE, "after": AFTER}
    down = run_handovers(h, RUNS, downlink=True, max_after=AFTER + 1.0, **window)
    tcp = run_handovers(
        h, RUNS, downlink=False, uplink=True, tcp=True, max_after=AFTER + 2.0, **window
    )
    report = (
        f"{scenario}, server {server_impl}\ndownlink only:\n{table(down)}\n"
        f"TCP and uplink:\n{table(tcp)}"
    )
    print(report)  # shown when the test fails

    resumes = [r.downlink_resume for r in down]
    assert all(r is not None and r < RESUME_MAX for r in resumes), report
    m = median(resumes)
    assert m is not None and m < RESUME_MEDIAN, report

    for r in down + tcp:
        assert r.endpoint_seen == f"{r.switch.new_address}:{CLIENT_PORT}", report
        assert r.endpoint_after is not None and r.endpoint_after < ENDPOINT_MAX, report

    assert all(r.tcp_intact for r in tcp), report
    m = median([r.tcp_stall_after_path for r in tcp])
    assert m is not None and m < STALL_MEDIAN, report
    if scenario != BREAK_BEFORE_MAKE:  # there the link is down for DOWN_TIME on purpose
        m = median([r.tcp_stall for r in tcp])
        assert m is not None and m < STALL_MEDIAN, report

    if scenario == BREAK_BEFORE_MAKE:
        # Uplink packets sent while no path existed were held, not dropped (at
        # most one send can fail before the peer is held).
        assert all(r.uplink_lost is not None and r.uplink_lost <= 1 for r in tcp), report
    assert all(r.uplink_resume is not None and r.uplink_resume < RESUME_MAX for r in tcp), report

    state = _client_state(h)
    assert state["handover"] == "on"
    assert state["last_underlay_change"] is not None
    server_key = h.server.public_key.to_base64()
    kinds = {e["kind"] for e in state["handover_events"] if e["peer"] in (None, server_key)}
    assert "reannounced" in kinds, state["handover_events"]
    if scenario == BREAK_BEFORE_MAKE:
        assert "path_lost" in kinds, state["handover_events"]
    assert state["peers"][0]["last_reannounce"] is not None


def test_without_handover_the_downlink_stays_broken(netns_lab: NetnsLab) -> None:
    """The control: WGPY_HANDOVER=0 (what `wgpy --no-handover` sets). Nothing
    tells the server, so the downlink-only stream never comes back."""
    h = build(
        netns_lab,
        BREAK_BEFORE_MAKE,
        client_impl=WGPY,
        server_impl=WIREGUARD_GO,
        client_env={"WGPY_HANDOVER": "0"},
    )
    [r] = run_handovers(h, 1, downlink=True, before=BEFORE, after=2.0, max_after=2.0)
    assert r.downlink_resume is None, table([r])
    assert r.endpoint_seen == f"{CLIENT_UPLINK[0]}:{CLIENT_PORT}"
    state = _client_state(h)
    assert state["handover"] == "off" and state["handover_events"] == []


# (first uplink: client address, gateway; second uplink: ...; the peer's endpoint)
FAMILIES = {
    "ipv4": ("10.41.1.2/24", "10.41.1.1", "10.41.2.2/24", "10.41.2.1", "10.99.0.1"),
    "ipv6": ("fd41:1::2/64", "fd41:1::1", "fd41:2::2/64", "fd41:2::1", "fd99::1"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_embedding_api_events_and_held_packets(netns_lab: NetnsLab, family: str) -> None:
    """A Device in this process: route changes give DeviceEvents and pin the
    new source address; with no route the peer's packets are held, and they
    go when a route returns. Its interface is moved to another namespace
    first: what is watched is the namespace of the UDP sockets."""
    addr1, gw1, addr2, gw2, endpoint = FAMILIES[family]
    lab = netns_lab
    ns, router = lab.namespace(), lab.namespace()
    gateway_end = "/64" if family == "ipv6" else "/24"
    lab.veth(ns, router, [addr1], [gw1 + gateway_end])
    lab.veth(ns, router, [addr2], [gw2 + gateway_end])
    v = ["-6"] if family == "ipv6" else ["-4"]
    ns.ip(*v, "route", "add", "default", "via", gw1)
    name = lab.interface_name(ns, prefix="wgh")
    container = lab.namespace()
    lab.links.append((container.name, name))
    remote = wgpy.PrivateKey.generate().public_key()
    seen: list[wgpy.DeviceEvent] = []

    async def expect(events: trio.MemoryReceiveChannel[wgpy.DeviceEvent], kind: str) -> None:
        with trio.fail_after(3):
            async for e in events:
                seen.append(e)
                if e.kind == kind:
                    return

    async def ip(*args: str) -> None:
        await trio.to_thread.run_sync(lambda: ns.ip(*v, *args))

    async def main() -> None:
        async with wgpy.Device(name, private_key=wgpy.PrivateKey.generate()) as dev:
            events = dev.subscribe()
            await trio.to_thread.run_sync(
                lambda: ns.ip("link", "set", name, "netns", container.name)
            )
            peer = await dev.add_peer(
                remote, endpoint=(endpoint, 51820), allowed_ips=["10.98.0.0/24"]
            )
            state = lambda: dev.datapath.peer_state(peer.id)  # noqa: E731
            await trio.sleep(0.2)  # the watcher learns the first path
            await ip("route", "replace", "default", "via", gw2)
            await expect(events, "underlay_changed")
            await expect(events, "reannounced")  # no keypair yet: a handshake
            assert "handshake" in seen[-1].detail and seen[-1].peer == remote
            # The new path's address is the source now, whatever arrives where.
            assert state().endpoint_source == addr2.split("/")[0]
            assert state().source_pinned

            await ip("route", "del", "default")
            await expect(events, "path_lost")
            assert state().held
            dev.datapath.send_keepalive(peer.id)  # a packet with no path: held, not dropped
            assert state().staged >= 1

            await ip("route", "add", "default", "via", gw1)
            await expect(events, "reannounced")
            assert not state().held
            assert state().endpoint_source == addr1.split("/")[0]
            report = dev.handover_report()
            assert report.enabled and report.last_underlay_change is not None
            assert [e.kind for e in report.events][-1] == "reannounced"
            assert remote in report.last_reannounce

    with entered_netns(ns.name):
        trio.run(main)


def test_resume_measure() -> None:
    """The measurement the thresholds apply to."""
    steady = [i * 0.005 for i in range(400)]  # 2 s at 200/s
    assert resume_after(steady, 1.0, 2.0) == pytest.approx(0.0, abs=0.006)
    # Nothing from 1.0 to 1.7 s, then steady again: resumed 0.7 s after.
    gap = [t for t in steady if not 1.0 <= t < 1.7]
    assert resume_after(gap, 1.0, 2.0) == pytest.approx(0.7, abs=0.006)
    # A few late packets of the old path right after the switch do not count.
    stray = sorted([*gap, 1.01, 1.02])
    assert resume_after(stray, 1.0, 2.0) == pytest.approx(0.7, abs=0.006)
    # Still nothing at the end of the window: never.
    assert resume_after([t for t in steady if t < 1.2], 1.0, 2.0) is None
