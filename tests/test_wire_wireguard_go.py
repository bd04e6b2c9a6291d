"""Wire proof: wgpy's sans-I/O core against a real WireGuard peer (wireguard-go).

Namespace A runs `wireguard-go` with a TUN interface holding 10.200.0.1/24 and
fd00:200::1/64. Namespace B has no WireGuard at all: only a UDP socket opened
inside it, driven by the wgpy API from this test. The two namespaces are joined
by a veth pair carrying the outer (UDP) traffic over IPv4 or IPv6.

Both roles are covered, with and without a preshared key: wgpy initiates and
pings A's kernel through the tunnel, and wgpy responds to wireguard-go's
handshake and answers a ping that A's kernel sends to 10.200.0.2.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import wgpy
from netns import Namespace, NetnsLab, require_programs, require_tun
from packets import (
    ICMP_ECHO_REQUEST,
    echo_reply_to,
    echo_request,
    icmp_echo,
    parse_echo,
    parse_ip,
)
from wgnet import WIREGUARD_GO, Node, PeerDump, endpoint_text, start_node

GO_PORT = 51820
GO_TUNNEL_V4 = "10.200.0.1"
GO_TUNNEL_V6 = "fd00:200::1"
WGPY_TUNNEL_V4 = "10.200.0.2"
WGPY_TUNNEL_V6 = "fd00:200::2"
MTU = 1420  # wireguard-go's default TUN MTU
STEP_TIMEOUT = 5.0  # seconds for any one network step; a hang fails the test

Address = tuple[str, int]


@pytest.fixture(autouse=True)
def _needs_wireguard_go() -> None:
    require_programs("wireguard-go", "wg", "ss")
    require_tun()


@dataclass(frozen=True)
class Outer:
    """The outer (UDP transport) network between namespaces A and B."""

    family: socket.AddressFamily
    a_address: str
    b_address: str


OUTERS = {
    "ipv4": Outer(socket.AF_INET, "10.77.0.1", "10.77.0.2"),
    "ipv6": Outer(socket.AF_INET6, "fd00:77::1", "fd00:77::2"),
}


@dataclass(frozen=True)
class Net:
    outer: Outer
    a: Namespace
    b: Namespace


def make_net(lab: NetnsLab, outer: Outer) -> Net:
    a, b = lab.namespace(), lab.namespace()
    lab.veth(a, b, ["10.77.0.1/24", "fd00:77::1/64"], ["10.77.0.2/24", "fd00:77::2/64"])
    return Net(outer, a, b)


@pytest.fixture(params=sorted(OUTERS))
def net(request: pytest.FixtureRequest, netns_lab: NetnsLab) -> Net:
    return make_net(netns_lab, OUTERS[request.param])


@dataclass(frozen=True)
class GoPeer:
    """wireguard-go in namespace A, and the UDP address it listens on."""

    node: Node
    endpoint: Address

    @property
    def public_key(self) -> wgpy.PublicKey:
        return self.node.public_key

    def peer_dump(self, public_key: wgpy.PublicKey) -> PeerDump:
        return self.node.peer_dump(public_key)


def start_wireguard_go(
    lab: NetnsLab,
    net: Net,
    *,
    peer: wgpy.PublicKey,
    preshared_key: wgpy.PresharedKey | None,
    peer_endpoint: Address | None,
) -> GoPeer:
    """wireguard-go in namespace A with one peer (wgpy), listening on GO_PORT."""
    node = start_node(
        lab,
        net.a,
        WIREGUARD_GO,
        port=GO_PORT,
        addresses=[f"{GO_TUNNEL_V4}/24", f"{GO_TUNNEL_V6}/64"],
    )
    node.set_peer(
        peer,
        [f"{WGPY_TUNNEL_V4}/32", f"{WGPY_TUNNEL_V6}/128"],
        endpoint=peer_endpoint,
        preshared_key=preshared_key,
    )
    return GoPeer(node, (net.outer.a_address, GO_PORT))


def udp_socket(net: Net) -> tuple[socket.socket, Address]:
    """A UDP socket in namespace B on B's outer address, and its address."""
    sock = net.b.socket(net.outer.family, socket.SOCK_DGRAM)
    sock.bind((net.outer.b_address, 0))
    host, port = sock.getsockname()[:2]
    return sock, (host, port)


def receive(
    sock: socket.socket, deadline: float, wanted: Callable[[bytes, Address], bool], what: str
) -> tuple[bytes, Address]:
    """The first datagram for which `wanted` is true, before `deadline`."""
    skipped: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}; skipped {skipped!r}")
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            continue
        address = (source[0], source[1])
        if wanted(data, address):
            return data, address
        skipped.append(data)


def receive_inner(
    sock: socket.socket,
    session: wgpy.Session,
    go: GoPeer,
    deadline: float,
    wanted: Callable[[bytes], bool],
    what: str,
) -> bytes:
    """Decrypt transport messages from `go` until an inner packet is `wanted`.

    Keepalives (empty plaintexts) and other inner packets are skipped; every
    transport message must decrypt, and every packet's padding must be zeros.
    """
    skipped: list[bytes] = []

    def is_transport(data: bytes, source: Address) -> bool:
        return source == go.endpoint and wgpy.message_type(data) == wgpy.MESSAGE_TRANSPORT

    while True:
        message, _ = receive(sock, deadline, is_transport, f"{what} (skipped {skipped!r})")
        plaintext = session.decrypt(message)
        if not plaintext:
            continue  # keepalive
        length = wgpy.inner_packet_len(plaintext)
        assert length is not None, f"not an IP packet: {plaintext.hex()}"
        assert plaintext[length:] == bytes(len(plaintext) - length), "non-zero padding"
        assert len(plaintext) % 16 == 0, "wireguard-go pads small packets to 16 bytes"
        packet = plaintext[:length]
        if wanted(packet):
            return packet
        skipped.append(packet)


def is_echo(kind: str, src: str, dst: str, ident: int) -> Callable[[bytes], bool]:
    def check(packet: bytes) -> bool:
        ip = parse_ip(packet)
        echo = parse_echo(ip)
        return (
            echo is not None
            and (echo.is_reply if kind == "reply" else echo.is_request)
            and ip.src == ipaddress.ip_address(src)
            and ip.dst == ipaddress.ip_address(dst)
            and echo.ident == ident
        )

    return check


def assert_wg_reports_peer(
    go: GoPeer,
    key: wgpy.PublicKey,
    endpoint: Address,
    preshared_key: wgpy.PresharedKey | None,
) -> None:
    peer = go.peer_dump(key)
    assert peer.endpoint == endpoint_text(*endpoint)
    assert peer.preshared_key == (preshared_key.to_base64() if preshared_key else "(none)")
    assert peer.latest_handshake > 0
    assert abs(time.time() - peer.latest_handshake) < 60
    assert peer.rx > 0
    assert peer.tx > 0


@pytest.mark.parametrize("use_psk", [False, True], ids=["no-psk", "psk"])
def test_wgpy_initiator_pings_through_wireguard_go(
    netns_lab: NetnsLab, net: Net, use_psk: bool
) -> None:
    our_key = wgpy.PrivateKey.generate()
    psk = wgpy.PresharedKey.generate() if use_psk else None
    go = start_wireguard_go(
        netns_lab, net, peer=our_key.public_key(), preshared_key=psk, peer_endpoint=None
    )
    sock, our_address = udp_socket(net)
    deadline = time.monotonic() + STEP_TIMEOUT

    handshake = wgpy.Handshake(our_key, go.public_key, psk)
    initiation = handshake.create_initiation()
    assert len(initiation) == wgpy.INITIATION_LEN == 148
    our_index = int.from_bytes(initiation[4:8], "little")
    sock.sendto(initiation, go.endpoint)

    def is_response(data: bytes, source: Address) -> bool:
        return source == go.endpoint and wgpy.message_type(data) == wgpy.MESSAGE_RESPONSE

    response, _ = receive(sock, deadline, is_response, "wireguard-go's handshake response")
    assert len(response) == wgpy.RESPONSE_LEN == 92
    assert wgpy.receiver_index(response) == our_index
    session = handshake.consume_response(response)
    assert session.is_initiator
    assert session.local_index == our_index
    assert session.remote_index == int.from_bytes(response[4:8], "little")

    # One echo over inner IPv4 and one over inner IPv6; A's kernel answers both.
    for seq, (src, dst) in enumerate(
        [(WGPY_TUNNEL_V4, GO_TUNNEL_V4), (WGPY_TUNNEL_V6, GO_TUNNEL_V6)], start=1
    ):
        ident, payload = secrets.randbelow(0x10000), secrets.token_bytes(56)
        message = session.encrypt(echo_request(src, dst, ident, seq, payload), MTU)
        sock.sendto(message, go.endpoint)
        reply = receive_inner(
            sock,
            session,
            go,
            time.monotonic() + STEP_TIMEOUT,
            is_echo("reply", dst, src, ident),
            f"echo reply from {dst}",
        )
        echo = parse_echo(parse_ip(reply))
        assert echo is not None
        assert (echo.ident, echo.seq, echo.payload) == (ident, seq, payload)

    assert_wg_reports_peer(go, our_key.public_key(), our_address, psk)


@pytest.mark.parametrize("use_psk", [False, True], ids=["no-psk", "psk"])
def test_wgpy_responder_answers_ping_from_wireguard_go(
    netns_lab: NetnsLab, net: Net, use_psk: bool
) -> None:
    our_key = wgpy.PrivateKey.generate()
    psk = wgpy.PresharedKey.generate() if use_psk else None
    sock, our_address = udp_socket(net)
    go = start_wireguard_go(
        netns_lab, net, peer=our_key.public_key(), preshared_key=psk, peer_endpoint=our_address
    )
    deadline = time.monotonic() + STEP_TIMEOUT

    # A's kernel pings 10.200.0.2; the packet makes wireguard-go start a handshake.
    pinger = net.a.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, seq, payload = secrets.randbelow(0x10000), 1, secrets.token_bytes(48)
    pinger.sendto(icmp_echo(ICMP_ECHO_REQUEST, ident, seq, payload), (WGPY_TUNNEL_V4, 0))

    def is_initiation(data: bytes, source: Address) -> bool:
        return source == go.endpoint and wgpy.message_type(data) == wgpy.MESSAGE_INITIATION

    message, _ = receive(sock, deadline, is_initiation, "wireguard-go's handshake initiation")
    assert len(message) == wgpy.INITIATION_LEN
    initiation = wgpy.open_initiation(our_key, message)
    assert initiation.peer_public_key == go.public_key
    handshake = wgpy.Handshake(our_key, initiation.peer_public_key, psk)
    response, session = handshake.respond(initiation)
    assert len(response) == wgpy.RESPONSE_LEN
    assert wgpy.receiver_index(response) == initiation.sender_index
    assert not session.is_initiator
    assert session.remote_index == initiation.sender_index
    sock.sendto(response, go.endpoint)

    request = receive_inner(
        sock,
        session,
        go,
        deadline,
        is_echo("request", GO_TUNNEL_V4, WGPY_TUNNEL_V4, ident),
        "the tunnelled echo request",
    )
    echo = parse_echo(parse_ip(request))
    assert echo is not None
    assert (echo.seq, echo.payload) == (seq, payload)
    sock.sendto(session.encrypt(echo_reply_to(request), MTU), go.endpoint)

    # wireguard-go must accept our transport message and A's kernel deliver the reply.
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no echo reply reached the pinger in namespace A"
        pinger.settimeout(remaining)
        try:
            received = pinger.recv(65535)
        except TimeoutError:
            continue
        ip = parse_ip(received)
        reply = parse_echo(ip)
        if reply is not None and reply.is_reply and reply.ident == ident:
            break
    assert ip.src == ipaddress.ip_address(WGPY_TUNNEL_V4)
    assert (reply.seq, reply.payload) == (seq, payload)

    assert_wg_reports_peer(go, our_key.public_key(), our_address, psk)


def test_mismatched_preshared_key_fails_authentication(netns_lab: NetnsLab) -> None:
    """The PSK is mixed in only after the responder's ephemeral, so wireguard-go
    answers an initiation made with another PSK, and wgpy must reject that answer."""
    net = make_net(netns_lab, OUTERS["ipv4"])
    our_key = wgpy.PrivateKey.generate()
    go = start_wireguard_go(
        netns_lab,
        net,
        peer=our_key.public_key(),
        preshared_key=wgpy.PresharedKey.generate(),
        peer_endpoint=None,
    )
    sock, _ = udp_socket(net)
    handshake = wgpy.Handshake(our_key, go.public_key, wgpy.PresharedKey.generate())
    sock.sendto(handshake.create_initiation(), go.endpoint)

    def is_response(data: bytes, source: Address) -> bool:
        return source == go.endpoint and wgpy.message_type(data) == wgpy.MESSAGE_RESPONSE

    response, _ = receive(
        sock, time.monotonic() + STEP_TIMEOUT, is_response, "wireguard-go's response"
    )
    with pytest.raises(wgpy.AuthenticationError):
        handshake.consume_response(response)
