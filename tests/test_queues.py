"""Several data-plane lanes (WGPY_QUEUES > 1; rust/src/datapath/lanes.rs) on
the real Device, between two daemons in two namespaces:

- the TUN device is multi-queue and the port an SO_REUSEPORT group, one
  queue and one socket per family for each lane, and the lanes all work;
- TCP streams (several, so the kernel spreads them over the queues) arrive
  intact, and UDP flows arrive in their order;
- one peer's datagrams leave in send-counter order although several lanes
  (and crypto workers) read and seal them: checked on the wire, where the
  sender's packets pass its veth (a packet socket sees them in the order
  the sends happened);
- a new listen port brings a new group, and traffic goes on.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections import defaultdict

from netns import NetnsLab, require_programs, require_tun, wait_until
from transfer import start_tcp_transfer
from wgnet import INNER_V4, WGPY, Node, make_pair
from wgpy.tun import SO_RCVBUFFORCE

# Two workers as well, so batches of one peer are sealed side by side and
# the send order (rust/src/datapath/sequence.rs) has something to do.
QUEUES = {"WGPY_QUEUES": "2", "WGPY_CRYPTO_THREADS": "2"}
# Lanes alone: each seals what it reads, on its own thread.
LANES_ONLY = {"WGPY_QUEUES": "2"}
FLOWS = 16  # UDP flows: the kernel hashes each to a queue, so both get some
PER_FLOW = 1500
PORT = 5310
# 28 bytes of IPv4 and UDP plus this payload make 1024: no padding, so every
# transport message of these datagrams is WG_LEN bytes long (16 of header,
# 16 of tag), and a UDP GSO train of them splits at multiples of WG_LEN.
PAYLOAD = 996
WG_LEN = 16 + 1024 + 16
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4


def port_sockets(node: Node) -> list[str]:
    """The UDP sockets bound to the node's listen port (ss lines)."""
    out = node.ns.run(["ss", "-H", "-u", "-a", "-n", f"sport = :{node.port}"]).stdout
    return [line for line in out.splitlines() if line.strip()]


def capture(node: Node) -> socket.socket:
    """A packet socket that sees the packets leaving `node`'s namespace."""
    # ETH_P_ALL: a socket bound to one protocol sees only incoming packets.
    cap = node.ns.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    cap.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    cap.setblocking(False)
    return cap


def transport_counters(cap: socket.socket, dst_port: int) -> dict[int, list[int]]:
    """(receiver index -> send counters in wire order) of the captured
    outgoing transport messages to `dst_port`, GSO trains split."""
    seen: dict[int, list[int]] = defaultdict(list)
    while True:
        try:
            packet, addr = cap.recvfrom(1 << 17)
        except BlockingIOError:
            return seen
        if addr[1] != ETH_P_IP or addr[2] != PACKET_OUTGOING or packet[9] != socket.IPPROTO_UDP:
            continue
        ihl = (packet[0] & 0x0F) * 4
        if struct.unpack_from(">H", packet, ihl + 2)[0] != dst_port:
            continue
        payload = packet[ihl + 8 :]
        step = WG_LEN if len(payload) % WG_LEN == 0 else len(payload)
        for at in range(0, len(payload), step):
            kind, index, counter = struct.unpack_from("<IIQ", payload, at)
            if kind == 4:
                seen[index].append(counter)


def numbered_udp(pair_a: Node, pair_b: Node) -> dict[int, list[int]]:
    """Sends FLOWS flows of numbered datagrams from a to b; returns what each
    flow's receiver got, in arrival order."""
    receivers = []
    for flow in range(FLOWS):
        rx = pair_b.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        rx.bind((INNER_V4[1], PORT + flow))
        rx.setblocking(False)
        receivers.append(rx)
    senders = []
    for flow in range(FLOWS):
        tx = pair_a.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect((INNER_V4[1], PORT + flow))
        senders.append(tx)
    payload = bytes(PAYLOAD - 8)
    for first in range(0, PER_FLOW, 50):
        for tx, i in itertools.product(senders, range(first, first + 50)):
            try:
                tx.send(struct.pack(">Q", i) + payload)
            except BlockingIOError:
                pass
        time.sleep(0.002)
    time.sleep(1.0)
    got: dict[int, list[int]] = {}
    for flow, rx in enumerate(receivers):
        got[flow] = []
        while True:
            try:
                got[flow].append(struct.unpack_from(">Q", rx.recv(2048))[0])
            except BlockingIOError:
                break
    return got


def test_lanes_share_the_work_and_keep_every_order(netns_lab: NetnsLab) -> None:
    require_programs("wg", "ping", "ss")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WGPY, env=QUEUES)
    assert pair.a.ping(INNER_V4[1], count=1)
    for node in (pair.a, pair.b):
        assert "queues: 2, crypto helper threads: 2" in node.process.log(), node.process.log()
        assert len(node.thread_cpu_ns("wgpy-lane")) == 2
        # Two IPv4 and two IPv6 sockets on the port: one of each per lane.
        assert len(port_sockets(node)) == 4, port_sockets(node)

    cap = capture(pair.a)
    before = pair.a.thread_cpu_ns("wgpy-lane")
    got = numbered_udp(pair.a, pair.b)
    after = pair.a.thread_cpu_ns("wgpy-lane")
    counters = transport_counters(cap, pair.b.port)

    total = sum(len(v) for v in got.values())
    assert total >= FLOWS * PER_FLOW * 0.8, f"{total} of {FLOWS * PER_FLOW} datagrams arrived"
    for flow, seen in got.items():
        late = sum(1 for x, y in itertools.pairwise(seen) if y <= x)
        assert late == 0, f"flow {flow}: {late} datagrams arrived out of order"
    assert counters, "no transport messages captured"
    for index, sent in counters.items():
        assert len(sent) > 1000, f"index {index}: only {len(sent)} messages captured"
        behind = sum(1 for x, y in itertools.pairwise(sent) if y <= x)
        assert behind == 0, f"index {index}: {behind} messages left behind a later counter"
    for lane in before:
        worked = after[lane] - before[lane]
        assert worked > 1_000_000, f"{lane} ran {worked} ns while 16 flows were sent"


def test_several_tcp_streams_arrive_intact(netns_lab: NetnsLab) -> None:
    require_programs("wg", "ping")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WGPY, env=LANES_ONLY)
    assert pair.a.ping(INNER_V4[1], count=1)
    jobs = [
        start_tcp_transfer(pair.a.ns, pair.b.ns, INNER_V4[1], 40 * 1024 * 1024, port=5201 + i)
        for i in range(4)
    ]
    # The reverse direction at the same time: b's lanes send while receiving.
    jobs.append(start_tcp_transfer(pair.b.ns, pair.a.ns, INNER_V4[0], 40 * 1024 * 1024, port=5211))
    for job in jobs:
        result = job.finish()
        assert result.received_bytes == result.sent_bytes == 40 * 1024 * 1024
        assert result.received_sha256 == result.sent_sha256


def test_a_new_listen_port_gets_a_new_group(netns_lab: NetnsLab) -> None:
    require_programs("wg", "ping", "ss")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WGPY, env={"WGPY_QUEUES": "3"})
    assert pair.a.ping(INNER_V4[1], count=1)
    pair.b.wg("set", pair.b.iface, "listen-port", "51999")
    b = Node(
        pair.b.lab,
        pair.b.ns,
        pair.b.impl,
        pair.b.iface,
        51999,
        pair.b.private_key,
        pair.b.process,
    )
    wait_until(lambda: len(port_sockets(b)) == 6, timeout=10, what="6 sockets on the new port")
    assert not port_sockets(pair.b), "the old port is still bound"
    pair.a.set_peer(pair.b, [f"{INNER_V4[1]}/32"], endpoint=(pair.outer[1], 51999))
    assert pair.a.ping(INNER_V4[1], count=3)
    assert len(pair.b.thread_cpu_ns("wgpy-lane")) == 3
