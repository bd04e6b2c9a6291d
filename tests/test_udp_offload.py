"""UDP segmentation offload through the tunnel: an application sending with
UDP_SEGMENT hands wgpy one large packet per send, which wgpy must cut into
the exact datagrams (checksums included: a wireguard-go receiver writes them
to a TUN device without offloads, so its kernel checks every checksum), and a
receiving wgpy coalesces the datagrams of one flow into few TUN writes that
the kernel hands back to a plain socket one datagram at a time, unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time

import pytest
from netns import Namespace, NetnsLab, require_programs, require_tun
from wgnet import INNER_V4, INNER_V6, WGPY, WIREGUARD_GO, make_pair
from wgpy.tun import SO_RCVBUFFORCE

UDP_SEGMENT = 103
GSO_SIZE = 1200
LAST = 700  # the last datagram of each send is shorter
PER_SEND = 10
SENDS = 150
PORT = 5301


def _kernel_has_tun_uso() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 2)


def datagram(index: int) -> bytes:
    size = LAST if index % PER_SEND == PER_SEND - 1 else GSO_SIZE
    body = hashlib.sha256(index.to_bytes(8, "big")).digest() * (size // 32 + 1)
    return (index.to_bytes(8, "big") + body)[:size]


def link_packets(ns: Namespace, iface: str) -> tuple[int, int]:
    """(rx, tx) packet counters of a link; a GSO packet counts once."""
    out = ns.run(["ip", "-j", "-s", "link", "show", "dev", iface]).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


def udp_counter(ns: Namespace, name: str) -> int:
    """A counter of the namespace's UDP (IPv4) and UDP6 statistics, summed."""
    v4 = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    heads, values = [line.split() for line in v4 if line.startswith("Udp:")][:2]
    total = int(values[heads.index(name)])
    for line in ns.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == f"Udp6{name}":
            total += int(value)
    return total


@pytest.mark.parametrize("inner_v6", [False, True], ids=["inner-v4", "inner-v6"])
@pytest.mark.parametrize("receiver", [WGPY, WIREGUARD_GO])
def test_udp_gso_sends_arrive_as_the_original_datagrams(
    netns_lab: NetnsLab, receiver: str, inner_v6: bool
) -> None:
    require_programs("wg", "ping", "wireguard-go")
    require_tun()
    pair = make_pair(netns_lab, WGPY, receiver)
    inner = INNER_V6 if inner_v6 else INNER_V4
    family = socket.AF_INET6 if inner_v6 else socket.AF_INET
    assert pair.a.ping(inner[1], count=1), "tunnel up"

    rx = pair.b.ns.socket(family, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    rx.bind((inner[1], PORT))
    tx = pair.a.ns.socket(family, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, GSO_SIZE)
    tx.connect((inner[1], PORT))

    a_before = link_packets(pair.a.ns, pair.a.iface)
    b_before = link_packets(pair.b.ns, pair.b.iface)
    for s in range(SENDS):
        tx.send(b"".join(datagram(s * PER_SEND + j) for j in range(PER_SEND)))
        time.sleep(0.002)  # wireguard-go's receive path is slow; loss is not the point
    total = SENDS * PER_SEND

    received: dict[int, bytes] = {}
    rx.settimeout(2.0)
    try:
        while len(received) < total:
            data = rx.recv(65536)
            (index,) = struct.unpack_from(">Q", data)
            assert index not in received, f"datagram {index} delivered twice"
            received[index] = data
    except TimeoutError:
        pass
    assert udp_counter(pair.b.ns, "InCsumErrors") == 0, "bad UDP checksums at the receiver"
    wrong = [i for i, d in received.items() if i >= total or d != datagram(i)]
    assert not wrong, f"{len(wrong)} datagrams changed on the way, e.g. {wrong[:5]}"
    # Nothing here should be lost (large socket buffer, idle machine); allow a little.
    assert len(received) >= total * 0.99, f"{len(received)} of {total} datagrams arrived"

    if _kernel_has_tun_uso():
        # The kernel handed wgpy one GSO packet per send instead of ten datagrams...
        read = link_packets(pair.a.ns, pair.a.iface)[1] - a_before[1]
        assert read <= total // 3, f"{read} TUN reads for {total} datagrams: no UDP GSO reads"
        if receiver == WGPY:
            # ...and the receiving wgpy wrote trains of datagrams, not one each.
            wrote = link_packets(pair.b.ns, pair.b.iface)[0] - b_before[0]
            assert wrote <= total // 3, f"{wrote} TUN writes for {total} datagrams"
    assert pair.a.process.alive() and pair.b.process.alive()
