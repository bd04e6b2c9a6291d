"""The whole device behaves as the kernel's WireGuard does where the control
plane and the data plane meet: each test drives a real wgpy (the
daemon, or `wgpy.Device` in this process) against a peer scripted on the
sans-I/O API (tests/scripted.py), over real sockets in network namespaces.

Addresses: namespace A (wgpy) has 10.77.0.1/24 and fd00:77::1/64 on its
veth, namespace B (the scripted peer) 10.77.0.2/24 and fd00:77::2/64; the
tunnel is 10.200.0.0/24 (A .1, B .2).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import wgpy
import wgref
from flood import flood_result, start_flood
from netns import Namespace, NetnsLab, add_address, entered_netns, require_programs, require_tun
from packets import echo_request, parse_echo, parse_ip
from scripted import ScriptedPeer, of_type
from wgnet import WGPY, Node, start_node

WGPY_CMD = [sys.executable, "-m", "wgpy"]
A_V4, B_V4 = "10.77.0.1", "10.77.0.2"
A_V6, B_V6 = "fd00:77::1", "fd00:77::2"
A_TUN, B_TUN = "10.200.0.1", "10.200.0.2"
PORT = 51820
# An initiation retried by the retransmit timer leaves REKEY_TIMEOUT plus at
# most 1/3 s of jitter after the last one; the rest is scheduling margin.
RETRANSMIT_WITHIN = wgpy.REKEY_TIMEOUT + 1 / 3 + 1.5


@pytest.fixture(autouse=True)
def _needs_tun() -> None:
    require_programs("wg", "ip")
    require_tun()


def two_hosts(lab: NetnsLab) -> tuple[Namespace, Namespace, str]:
    """Namespaces A and B joined by a veth pair; returns A's veth name too."""
    a, b = lab.namespace(), lab.namespace()
    pair = lab.veth(a, b, [f"{A_V4}/24", f"{A_V6}/64"], [f"{B_V4}/24", f"{B_V6}/64"])
    return a, b, pair.a_ifname


def wgpy_node(lab: NetnsLab, a: Namespace, **kw: object) -> Node:
    return start_node(lab, a, WGPY, port=PORT, addresses=[f"{A_TUN}/24"], **kw)  # type: ignore[arg-type]


def udp_to_tunnel(ns: Namespace, payload: bytes, dst: str = B_TUN, port: int = 9) -> None:
    """One UDP datagram from `ns` into the tunnel (the interface routes it)."""
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.sendto(payload, (dst, port))


def carries(payload: bytes) -> Callable[[bytes], bool]:
    """An inner-packet filter: an IPv4 UDP datagram whose payload is `payload`."""

    def check(packet: bytes) -> bool:
        return packet[0] >> 4 == 4 and packet[9] == 17 and packet[28:] == payload

    return check


def run_in(ns: Namespace, main: Callable[[], object]) -> None:
    """Runs the Trio function `main` with this thread inside `ns` (for a Device)."""
    with entered_netns(ns.name):
        trio.run(main)  # type: ignore[arg-type]


@contextlib.contextmanager
def wgpy_up(ns: Namespace, conf: Path) -> Iterator[None]:
    up = ns.run([*WGPY_CMD, "up", str(conf)], check=False, timeout=30)
    assert up.returncode == 0, up.stderr
    try:
        yield
    finally:
        ns.run([*WGPY_CMD, "down", str(conf)], check=False, timeout=30)


# --- 1. persistent keepalive -------------------------------------------------------------


def test_new_peer_with_persistent_keepalive_sends_at_once(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    """`wgpy up` of a peer with an endpoint and PersistentKeepalive and no
    traffic: something reaches the endpoint within 1 s (the kernel sends a
    keepalive when the interval is turned on, which, with no session yet,
    starts a handshake), so a client behind NAT that only receives is reachable."""
    a, b, _ = two_hosts(netns_lab)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    iface = netns_lab.interface_name(a, prefix="wgq")
    conf = tmp_path / f"{iface}.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {wgpy.PrivateKey.generate().to_base64()}\n"
        f"Address = {A_TUN}/24\n\n"
        "[Peer]\n"
        f"PublicKey = {peer.public_key.to_base64()}\n"
        f"Endpoint = {B_V4}:51900\n"
        f"AllowedIPs = {B_TUN}/32\n"
        "PersistentKeepalive = 5\n"
    )
    with wgpy_up(a, conf):
        message, _ = peer.receive(of_type(wgpy.MESSAGE_INITIATION), "an initiation", timeout=1.0)
    assert wgpy.open_initiation(peer.private_key, message).peer_public_key is not None


def test_persistent_keepalive_turned_on_sends_a_keepalive(netns_lab: NetnsLab) -> None:
    """On a tunnel with a session, turning the interval on from 0 sends one
    keepalive at once (kernel netlink.c set_peer, wireguard-go pkaOn)."""
    a, b, _ = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], endpoint=peer.address)
    handshake, _ = peer.initiate(node.public_key, (A_V4, PORT))
    peer.complete(handshake)
    peer.send_packet(b"", (A_V4, PORT))  # a keepalive confirms the key
    assert peer.nothing_arrives(of_type(wgpy.MESSAGE_TRANSPORT), 0.5)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], keepalive=25)
    plaintext, _ = peer.receive_plaintext(lambda p: p == b"", "a keepalive", timeout=1.0)
    assert plaintext == b""


# --- 2. staged packets and the endpoint --------------------------------------------------


def test_staged_packets_go_once_the_endpoint_is_set(netns_lab: NetnsLab) -> None:
    """Traffic to a peer without an endpoint is staged; setting the endpoint
    later gets an initiation out within REKEY_TIMEOUT, and the staged packets
    arrive once the handshake completes."""
    a, b, _ = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"])
    for i in range(3):
        udp_to_tunnel(a, b"staged %d" % i)
    time.sleep(0.3)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], endpoint=peer.address)
    set_at = time.monotonic()
    message, source = peer.receive(
        of_type(wgpy.MESSAGE_INITIATION), "an initiation", timeout=RETRANSMIT_WITHIN
    )
    assert time.monotonic() - set_at < RETRANSMIT_WITHIN
    peer.respond(node.public_key, message, source)
    for i in range(3):
        peer.receive_inner(carries(b"staged %d" % i), f"staged datagram {i}")


# --- 3. a replayed initiation ------------------------------------------------------------


def test_replayed_initiation_changes_nothing(netns_lab: NetnsLab) -> None:
    """A captured initiation replayed 1,000 times (valid mac1, old timestamp)
    is refused before anything changes: the receiver-index table keeps its
    size and our own initiation in flight stays valid, so its response
    completes the handshake."""
    a, b, _ = two_hosts(netns_lab)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    name = netns_lab.interface_name(a, prefix="wgc")
    key = wgpy.PrivateKey.generate()

    async def main() -> None:
        async with wgpy.Device(name, private_key=key, listen_port=PORT) as dev:
            await dev.add_peer(peer.public_key, endpoint=peer.address, allowed_ips=[f"{B_TUN}/32"])
            await trio.to_thread.run_sync(lambda: add_address(a, name, f"{A_TUN}/24"))
            await trio.to_thread.run_sync(lambda: a.ip("link", "set", name, "up"))
            handshake, captured = peer.initiate(key.public_key(), (A_V4, PORT))
            await trio.to_thread.run_sync(peer.complete, handshake)
            # The responder's keypair waits for confirmation, so our own traffic
            # starts a handshake of ours, once REKEY_TIMEOUT has passed since the
            # response (the kernel's rate: a response counts as a handshake sent).
            await trio.sleep(wgpy.REKEY_TIMEOUT + 0.2)
            await trio.to_thread.run_sync(lambda: udp_to_tunnel(a, b"after the replay"))
            ours, source = await trio.to_thread.run_sync(
                lambda: peer.receive(of_type(wgpy.MESSAGE_INITIATION), "our initiation")
            )
            before = dev.datapath.stats()
            # In bursts the handshake thread keeps up with: below a backlog of
            # 512 no mac2 is needed, so each replay reaches the replay check.
            for _ in range(20):
                for _ in range(50):
                    peer.sock.sendto(captured, (A_V4, PORT))
                await trio.sleep(0.03)
            await trio.sleep(0.5)
            after = dev.datapath.stats()
            assert after.indices == before.indices, (before, after)
            assert after.handshake_rejected - before.handshake_rejected == 1000, after
            assert after.cookie_replies_sent == before.cookie_replies_sent, after
            peer.respond(key.public_key(), ours, source)
            await trio.to_thread.run_sync(
                lambda: peer.receive_inner(carries(b"after the replay"), "the staged datagram")
            )

    run_in(a, main)


# --- 4. replies leave from the address the peer contacted ---------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_replies_leave_from_the_address_the_peer_contacted(
    netns_lab: NetnsLab, family: str
) -> None:
    """A has two addresses of each family on one interface; the peer contacts
    each in turn (a handshake, then data) and every reply comes from the
    address it contacted, not from the routing table's preferred source."""
    a, b, veth = two_hosts(netns_lab)
    v6 = family == "ipv6"
    first, second = (A_V6, "fd00:77::3") if v6 else (A_V4, "10.77.0.3")
    node = wgpy_node(netns_lab, a)
    peer = ScriptedPeer.bind(b, B_V6 if v6 else B_V4)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"])
    handshake, _ = peer.initiate(node.public_key, (first, PORT))
    peer.complete(handshake)
    peer.send_packet(b"", (first, PORT))
    # The second address arrives while the tunnel runs (DHCP, SLAAC, an admin);
    # for IPv6 it becomes the routing table's preferred source. Our address
    # did not change, so nothing may come from the new one.
    add_address(a, veth, f"{second}/64" if v6 else f"{second}/24")
    assert peer.nothing_arrives(lambda _data, source: source[0] == second, 1.0)
    ident = 0x4242
    for round_, address in enumerate([first, second, first]):
        # Past the 20 ms flood rule and the 16.7 ms granularity of timestamps.
        time.sleep(0.1)
        handshake, _ = peer.initiate(node.public_key, (address, PORT))
        _, source = peer.complete(handshake)
        assert source[0] == address, f"response to {address} came from {source[0]}"
        for contacted in (address, second if address == first else first):
            seq = round_ * 10 + (1 if contacted == address else 2)
            peer.send_packet(echo_request(B_TUN, A_TUN, ident, seq, b"x" * 32), (contacted, PORT))

            def is_reply(packet: bytes, seq: int = seq) -> bool:
                echo = parse_echo(parse_ip(packet))
                return echo is not None and echo.is_reply and echo.seq == seq

            _, source = peer.receive_inner(is_reply, f"echo reply {seq}")
            assert source[0] == contacted, f"reply to {contacted} came from {source[0]}"


# --- 6. a data-plane thread that panics -------------------------------------------------


def test_a_panicking_data_plane_thread_ends_the_daemon(netns_lab: NetnsLab) -> None:
    """A panic in a data-plane thread takes the daemon down at once, with a
    log line naming the thread and a non-zero exit status; it never leaves a
    daemon that silently stopped forwarding."""
    a, b, _ = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a, env={"WGPY_TEST_PANIC_THREAD": "wgpy-lane0"})
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], endpoint=peer.address)
    peer.initiate(node.public_key, (A_V4, PORT))  # wakes the receive thread
    deadline = time.monotonic() + 5
    while node.process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node.process.alive(), "the daemon survived a panicking thread"
    assert node.process.popen.returncode != 0
    assert "wgpy-lane0" in node.process.log(), node.process.log()


# --- 7. handshake messages without a valid mac1 ------------------------------------------


def test_bad_mac1_flood_does_not_delay_a_legitimate_handshake(netns_lab: NetnsLab) -> None:
    """Initiations with a bad mac1, sent as fast as this machine can, are
    dropped by the receive thread before they are queued: a legitimate
    peer's handshake completes within 1 s during the flood."""
    a, b, _ = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a, log_level="error")
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"])
    attacker = netns_lab.namespace()
    netns_lab.veth(attacker, a, ["10.78.0.1/24"], ["10.78.0.2/24"])
    flood = start_flood(
        attacker,
        node.public_key,
        ("10.78.0.2", PORT),
        source="10.78.0.1",
        limit=50_000_000,
        seconds=8,
        rate=-1,
        bad_mac1=True,
    )
    time.sleep(2.0)  # the queue would be full by now if junk were queued
    assert flood.alive(), flood.log()
    for _ in range(3):
        handshake, _ = peer.initiate(node.public_key, (A_V4, PORT))
        started = time.monotonic()
        peer.complete(handshake, timeout=1.0)
        assert time.monotonic() - started < 1.0
        time.sleep(0.2)  # the next initiation is newer and past the flood rule
    flood.popen.wait(timeout=30)
    assert flood_result(flood)["sent"] > 100_000


# --- 8. the control plane never stalls on a full socket ----------------------------------


def test_control_plane_answers_while_the_uplink_is_congested(netns_lab: NetnsLab) -> None:
    """With the outer link so congested that sends fail with EAGAIN, requests
    that make the control plane send (turning on a keepalive) and UAPI
    requests still complete promptly."""
    require_programs("tc")
    a, b, veth = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a, log_level="error")
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], endpoint=peer.address)
    handshake, _ = peer.initiate(node.public_key, (A_V4, PORT))
    peer.complete(handshake)
    peer.send_packet(b"", (A_V4, PORT))
    # A queue that holds 100 MB and drains at 8 kbit/s: the socket's 7 MiB
    # send buffer fills and stays full.
    a.run(["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "8kbit", "burst", "1540",
           "limit", "100000000"])  # fmt: skip
    blaster = a.spawn([sys.executable, "-c", BLAST, B_TUN, "8"])
    time.sleep(2.0)
    for interval in ("1", "0", "1"):
        started = time.monotonic()
        node.set_peer(peer.public_key, [f"{B_TUN}/32"], keepalive=int(interval))
        node.wg("show", node.iface, "dump")
        assert time.monotonic() - started < 1.5, f"{time.monotonic() - started:.2f} s"
    blaster.stop()


BLAST = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.sendto(b"x" * 1200, (sys.argv[1], 9))
    except OSError:
        time.sleep(0.001)
"""


# --- 9. smaller ones ---------------------------------------------------------------------


def test_endpoint_events_are_deduplicated(netns_lab: NetnsLab) -> None:
    """A peer whose packets arrive from two alternating source ports (an
    on-path box rewriting them) does not produce an event per packet."""
    a, b, _ = two_hosts(netns_lab)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    other = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((B_V4, 51901))
    name = netns_lab.interface_name(a, prefix="wgc")
    key = wgpy.PrivateKey.generate()

    async def main() -> None:
        async with wgpy.Device(name, private_key=key, listen_port=PORT, handover=False) as dev:
            events = dev.subscribe(max_buffer=10_000)
            await dev.add_peer(peer.public_key, allowed_ips=[f"{B_TUN}/32"])
            handshake, _ = peer.initiate(key.public_key(), (A_V4, PORT))
            await trio.to_thread.run_sync(peer.complete, handshake)
            for i in range(400):
                peer.send_packet(b"", (A_V4, PORT), via=other if i % 2 else None)
                if i % 50 == 0:
                    await trio.sleep(0)
            await trio.sleep(1.0)
            changes = 0
            while True:
                try:
                    event = events.receive_nowait()
                except trio.WouldBlock:
                    break
                changes += event.kind == "endpoint_changed"
            assert 1 <= changes <= 20, changes

    run_in(a, main)


def test_private_key_change_keeps_the_replay_state(netns_lab: NetnsLab) -> None:
    """Changing the private key does not forget the newest handshake
    timestamp accepted from each peer (the kernel keeps it): an older
    timestamp is still refused under the new key, a newer one accepted."""
    a, b, _ = two_hosts(netns_lab)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    name = netns_lab.interface_name(a, prefix="wgc")
    first, second = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    now = int(time.time())

    async def answered(key: wgpy.PrivateKey, unix: int) -> bool:
        handshake, _ = peer.initiate(key.public_key(), (A_V4, PORT), timestamp=wgref.tai64n(unix))
        try:
            await trio.to_thread.run_sync(lambda: peer.complete(handshake, timeout=1.0))
        except AssertionError:
            return False
        return True

    async def main() -> None:
        async with wgpy.Device(name, private_key=first, listen_port=PORT) as dev:
            await dev.add_peer(peer.public_key, allowed_ips=[f"{B_TUN}/32"])
            assert await answered(first, now + 10)
            dev.set_private_key(second)
            assert not await answered(second, now + 5), "an older timestamp was accepted"
            assert await answered(second, now + 20)

    run_in(a, main)


def test_padding_follows_a_lowered_mtu_in_another_namespace(netns_lab: NetnsLab) -> None:
    """Padding never goes past the interface's MTU, also after the MTU was
    lowered on an interface moved to another namespace."""
    a, b, _ = two_hosts(netns_lab)
    node = wgpy_node(netns_lab, a)
    peer = ScriptedPeer.bind(b, B_V4, 51900)
    node.set_peer(peer.public_key, [f"{B_TUN}/32"], endpoint=peer.address)
    container = netns_lab.namespace()
    a.ip("link", "set", node.iface, "netns", container.name)
    netns_lab.links.append((container.name, node.iface))
    add_address(container, node.iface, f"{A_TUN}/24")
    container.ip("link", "set", node.iface, "mtu", "1270", "up")
    time.sleep(1.5)
    handshake, _ = peer.initiate(node.public_key, (A_V4, PORT))
    peer.complete(handshake)
    peer.send_packet(b"", (A_V4, PORT))
    payload = b"p" * (1268 - 28)  # a 1268-byte IP packet: 16-byte alignment would give 1280
    udp_to_tunnel(container, payload)
    plaintext, _ = peer.receive_plaintext(lambda p: p[28 : 28 + len(payload)] == payload, "data")
    assert len(plaintext) == 1270, len(plaintext)


# --- 11. current Trio ---------------------------------------------------------------------


def test_an_exception_in_the_device_body_comes_out_as_itself(netns_lab: NetnsLab) -> None:
    a, _b, _ = two_hosts(netns_lab)
    name = netns_lab.interface_name(a, prefix="wgc")

    class Boom(Exception):
        pass

    async def main() -> None:
        with pytest.raises(Boom):
            async with wgpy.Device(name, private_key=wgpy.PrivateKey.generate()):
                raise Boom

    run_in(a, main)
