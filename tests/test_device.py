"""The wgpy device against wireguard-go and against itself, in namespaces.

Every node is configured with the real `wg` tool through its UAPI socket,
so the same steps drive both implementations.
"""

from __future__ import annotations

import pytest
import trio
import wgpy
from netns import NetnsLab, add_address, entered_netns, require_programs, require_tun, wait_until
from transfer import start_tcp_transfer, tcp_transfer
from wgnet import (
    INNER_V4,
    INNER_V6,
    WGPY,
    WIREGUARD_GO,
    endpoint_text,
    make_pair,
    start_node,
)
from wgpy.tun import OFFLOAD_ENV

PAIRS = [(WGPY, WIREGUARD_GO), (WIREGUARD_GO, WGPY), (WGPY, WGPY)]


def pair_id(p: tuple[str, str]) -> str:
    return f"{p[0]}-initiates-{p[1]}"


@pytest.fixture(autouse=True)
def _needs_tools() -> None:
    require_programs("wireguard-go", "wg", "ping", "ss")
    require_tun()


@pytest.mark.parametrize("impls", PAIRS, ids=pair_id)
@pytest.mark.parametrize("outer_v6", [False, True], ids=["outer-v4", "outer-v6"])
@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_handshake_and_ping_both_ways(
    netns_lab: NetnsLab, impls: tuple[str, str], outer_v6: bool, with_psk: bool
) -> None:
    psk = wgpy.PresharedKey.generate() if with_psk else None
    pair = make_pair(netns_lab, *impls, outer_v6=outer_v6, preshared_key=psk)
    # a knows b's endpoint, so a's first packet starts the handshake.
    assert pair.a.ping(INNER_V4[1]), "a -> b over inner IPv4"
    assert pair.a.ping(INNER_V6[1]), "a -> b over inner IPv6"
    assert pair.b.ping(INNER_V4[0]), "b -> a over inner IPv4"
    assert pair.b.ping(INNER_V6[0]), "b -> a over inner IPv6"
    seen_by_b = pair.b.peer_dump(pair.a.public_key)
    seen_by_a = pair.a.peer_dump(pair.b.public_key)
    assert seen_by_b.endpoint == endpoint_text(pair.outer[0], pair.a.port)
    assert seen_by_a.endpoint == endpoint_text(pair.outer[1], pair.b.port)
    for dump in (seen_by_a, seen_by_b):
        assert dump.latest_handshake > 0
        assert dump.rx > 0 and dump.tx > 0
        assert dump.preshared_key == (psk.to_base64() if psk else "(none)")


@pytest.mark.parametrize(
    "impls", [(WGPY, WIREGUARD_GO), (WIREGUARD_GO, WGPY), (WGPY, WGPY)], ids=pair_id
)
def test_200mb_tcp_transfer_is_intact(netns_lab: NetnsLab, impls: tuple[str, str]) -> None:
    pair = make_pair(netns_lab, *impls, preshared_key=wgpy.PresharedKey.generate())
    assert pair.a.ping(INNER_V4[1])
    result = tcp_transfer(pair.a.ns, pair.b.ns, INNER_V4[1], 200 * 1024 * 1024)
    assert result.received_bytes == result.sent_bytes == 200 * 1024 * 1024
    assert result.received_sha256 == result.sent_sha256
    # The counters on each side agree with the volume that went through.
    assert pair.a.peer_dump(pair.b.public_key).tx > 200 * 1024 * 1024
    assert pair.b.peer_dump(pair.a.public_key).rx > 200 * 1024 * 1024


@pytest.mark.parametrize("impls", [(WGPY, WIREGUARD_GO), (WGPY, WGPY)], ids=pair_id)
def test_tcp_over_inner_ipv6_is_intact(netns_lab: NetnsLab, impls: tuple[str, str]) -> None:
    """IPv6 inner TCP: the TUN offloads cut and rebuild TCPv6 GSO packets."""
    pair = make_pair(netns_lab, *impls)
    assert pair.a.ping(INNER_V6[1])
    result = tcp_transfer(pair.a.ns, pair.b.ns, INNER_V6[1], 64 * 1024 * 1024)
    assert result.received_bytes == result.sent_bytes == 64 * 1024 * 1024
    assert result.received_sha256 == result.sent_sha256


def test_tcp_transfer_without_tun_offloads_is_intact(netns_lab: NetnsLab) -> None:
    """Without TUN offloads (an older kernel, or WGPY_TUN_OFFLOAD=0) every
    packet is read and written on its own, with no vnet header."""
    pair = make_pair(netns_lab, WGPY, WGPY, env={OFFLOAD_ENV: "0"})
    for node in (pair.a, pair.b):
        details = node.ns.ip("-d", "link", "show", "dev", node.iface).stdout
        assert "vnet_hdr off" in details, details
    assert pair.a.ping(INNER_V4[1])
    result = tcp_transfer(pair.a.ns, pair.b.ns, INNER_V4[1], 32 * 1024 * 1024)
    assert result.received_bytes == result.sent_bytes == 32 * 1024 * 1024
    assert result.received_sha256 == result.sent_sha256


def test_wrong_preshared_key_never_completes(netns_lab: NetnsLab) -> None:
    pair = make_pair(netns_lab, WGPY, WIREGUARD_GO, preshared_key=wgpy.PresharedKey.generate())
    pair.b.set_peer(pair.a, [f"{INNER_V4[0]}/32"], preshared_key=wgpy.PresharedKey.generate())
    assert not pair.a.ping(INNER_V4[1], count=2, timeout=1)
    assert pair.a.peer_dump(pair.b.public_key).latest_handshake == 0


def test_cryptokey_routing_longest_prefix_and_source_check(netns_lab: NetnsLab) -> None:
    """One wgpy device, two wireguard-go peers with overlapping allowed IPs."""
    lab = netns_lab
    hub_ns, x_ns, y_ns = lab.namespace(), lab.namespace(), lab.namespace()
    lab.veth(hub_ns, x_ns, ["10.77.1.1/24"], ["10.77.1.2/24"])
    lab.veth(hub_ns, y_ns, ["10.77.2.1/24"], ["10.77.2.2/24"])
    hub = start_node(lab, hub_ns, WGPY, port=51820, addresses=["10.201.0.1/24"])
    x = start_node(lab, x_ns, WIREGUARD_GO, port=51821, addresses=["10.200.1.1/16"])
    y = start_node(lab, y_ns, WIREGUARD_GO, port=51822, addresses=["10.200.5.1/24"])
    hub.set_peer(x, ["10.200.0.0/16"], endpoint=("10.77.1.2", x.port))
    hub.set_peer(y, ["10.200.5.0/24"], endpoint=("10.77.2.2", y.port))
    for node in (x, y):
        node.set_peer(hub, ["10.201.0.0/24"])
        node.ns.ip("route", "add", "10.201.0.0/24", "dev", node.iface)
    hub.ns.ip("route", "add", "10.200.0.0/16", "dev", hub.iface)
    # 10.200.5.1 is inside both prefixes: the /24 (y) must win over the /16 (x).
    assert hub.ping("10.200.5.1"), "the longer prefix routes to y"
    assert hub.ping("10.200.1.1"), "the shorter prefix routes to x"
    # x claims an address that routes to y: wgpy must drop it, not deliver it.
    x.ns.ip("address", "add", "10.200.5.9/32", "dev", x.iface)
    assert not x.ping("10.201.0.1", source="10.200.5.9", count=2, timeout=1)
    assert x.ping("10.201.0.1", source="10.200.1.1")
    stats = hub_stats(hub)
    x_stats = next(p for p in stats["peers"] if p["public_key"] == x.public_key.to_base64())
    y_stats = next(p for p in stats["peers"] if p["public_key"] == y.public_key.to_base64())
    assert x_stats["invalid_source_packets"] >= 2
    assert y_stats["invalid_source_packets"] == 0


def hub_stats(node) -> dict:
    import json
    import sys

    out = node.ns.run([sys.executable, "-m", "wgpy", "show", node.iface, "--json"]).stdout
    return json.loads(out)["interfaces"][0]


def test_roaming_client_address_change_keeps_tcp_alive(netns_lab: NetnsLab) -> None:
    """wgpy's underlay address changes mid-stream; wireguard-go follows it."""
    pair = make_pair(netns_lab, WGPY, WIREGUARD_GO)
    a = pair.a
    veth = next(name for ns, name in netns_lab.links if ns == a.ns.name and name.startswith("va"))
    a.ns.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{veth}.promote_secondaries=1"])
    assert a.ping(INNER_V4[1])
    assert pair.b.peer_dump(a.public_key).endpoint == f"10.77.0.1:{a.port}"

    job = start_tcp_transfer(a.ns, pair.b.ns, INNER_V4[1], 16 * 1024 * 1024, pace=0.02)
    wait_until(
        lambda: pair.b.peer_dump(a.public_key).rx > 1_000_000, timeout=20, what="stream running"
    )
    a.ns.ip("address", "add", "10.77.0.11/24", "dev", veth)
    a.ns.ip("address", "del", "10.77.0.1/24", "dev", veth)
    r = job.finish()
    assert r.received_sha256 == r.sent_sha256
    assert r.longest_gap < 2.0, f"stream stalled {r.longest_gap:.2f} s"
    assert pair.b.peer_dump(a.public_key).endpoint == f"10.77.0.11:{a.port}"


def test_embedding_api_reports_handshake_and_roaming(netns_lab: NetnsLab) -> None:
    """A Device in this process as the server of a wireguard-go client: the
    handshake and the client's endpoint reach subscribers as DeviceEvents,
    and so does the endpoint learnt from a data packet after the client
    moved to another port (roaming, seen by the data plane)."""
    a, b = netns_lab.namespace(), netns_lab.namespace()
    netns_lab.veth(a, b, ["10.77.0.1/24"], ["10.77.0.2/24"])
    client = start_node(netns_lab, a, WIREGUARD_GO, port=51820, addresses=["10.200.0.1/24"])
    server_key = wgpy.PrivateKey.generate()
    client.set_peer(server_key.public_key(), ["10.200.0.2/32"], endpoint=("10.77.0.2", 51821))
    name = netns_lab.interface_name(b, prefix="wge")
    seen: list[wgpy.DeviceEvent] = []

    async def expect(
        events: trio.MemoryReceiveChannel[wgpy.DeviceEvent], kind: str, endpoint: tuple[str, int]
    ) -> None:
        with trio.fail_after(5):
            async for e in events:
                seen.append(e)
                if e.kind == kind and e.endpoint == endpoint:
                    assert e.peer == client.public_key
                    return

    async def ping() -> None:
        assert await trio.to_thread.run_sync(lambda: client.ping("10.200.0.2", count=1))

    async def main() -> None:
        async with wgpy.Device(name, private_key=server_key, listen_port=51821) as dev:
            events = dev.subscribe()
            await dev.add_peer(client.public_key, allowed_ips=["10.200.0.1/32"])
            await trio.to_thread.run_sync(lambda: add_address(b, name, "10.200.0.2/24"))
            await trio.to_thread.run_sync(lambda: b.ip("link", "set", name, "up"))
            await ping()
            await expect(events, "endpoint_changed", ("10.77.0.1", 51820))
            # wireguard-go rebinds and sends its next data packet from 51999.
            await trio.to_thread.run_sync(
                lambda: client.wg("set", client.iface, "listen-port", "51999")
            )
            await ping()
            await expect(events, "endpoint_changed", ("10.77.0.1", 51999))
            state = dev.datapath.peer_state(dev.peer(client.public_key).id)
            assert state.endpoint == ("10.77.0.1", 51999)
            # Key confirmation (the first data packet) completed the handshake.
            assert "handshake_completed" in [e.kind for e in seen], seen

    with entered_netns(b.name):
        trio.run(main)


def test_embedding_api_reports_give_up_and_removal(netns_lab: NetnsLab) -> None:
    """`handshake_failed` when the peer's timers give up (the give-up itself,
    after 20 unanswered initiations, is tests/test_timers.py's; here the
    action the timers call reaches subscribers and the UAPI counter), and
    `peer_removed` when a peer is removed."""
    from wgpy.control import parse_get
    from wgpy.uapi.protocol import format_get

    ns = netns_lab.namespace()
    name = netns_lab.interface_name(ns, prefix="wge")
    peer_key = wgpy.PrivateKey.generate().public_key()

    async def next_event(events: trio.MemoryReceiveChannel[wgpy.DeviceEvent]) -> wgpy.DeviceEvent:
        with trio.fail_after(5):
            return await events.receive()

    async def main() -> None:
        async with wgpy.Device(name, private_key=wgpy.PrivateKey.generate()) as dev:
            events = dev.subscribe()
            peer = await dev.add_peer(peer_key, endpoint=("192.0.2.1", 51820))
            peer.handshake_failed()  # what PeerTimers calls at the give-up
            failed = await next_event(events)
            assert (failed.kind, failed.peer) == ("handshake_failed", peer_key)
            stats = parse_get(name, format_get(dev).decode()).stats
            assert stats["handshakes_failed"] == 1
            dev.remove_peer(peer_key)
            removed = await next_event(events)
            assert (removed.kind, removed.peer) == ("peer_removed", peer_key)
            dev.remove_peer(peer_key)  # already gone: nothing more to report
            assert events.statistics().current_buffer_used == 0

    with entered_netns(ns.name):
        trio.run(main)
