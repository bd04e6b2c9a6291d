"""Encryption and decryption on the crypto pipeline's workers
(WGPY_CRYPTO_THREADS; rust/src/datapath/pipeline.rs): the workers really
take part, and packets still leave and arrive in order.

The default is no workers, so this is the test that exercises the pipeline
with one lane (tests/test_queues.py: with several)."""

from __future__ import annotations

import itertools
import socket
import struct
import time

from netns import NetnsLab, require_programs, require_tun
from transfer import tcp_transfer
from wgnet import INNER_V4, WGPY, make_pair, start_node
from wgpy.tun import SO_RCVBUFFORCE

HELPERS = {"WGPY_CRYPTO_THREADS": "2"}
PORT = 5302
DATAGRAMS = 30_000
BURST = 100


def test_helpers_work_and_keep_packet_order(netns_lab: NetnsLab) -> None:
    require_programs("wg", "ping")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WGPY, env=HELPERS)
    assert pair.a.ping(INNER_V4[1], count=1)
    for node in (pair.a, pair.b):
        assert "crypto helper threads: 2" in node.process.log(), node.process.log()
        assert len(node.thread_cpu_ns("wgpy-crypto")) == 2

    # Bursts of numbered datagrams fill batches that the two workers seal
    # side by side; the receiver must see them in the order sent.
    rx = pair.b.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    rx.bind((INNER_V4[1], PORT))
    tx = pair.a.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect((INNER_V4[1], PORT))
    payload = bytes(992)
    for first in range(0, DATAGRAMS, BURST):
        for i in range(first, first + BURST):
            try:
                tx.send(struct.pack(">Q", i) + payload)
            except BlockingIOError:
                pass
        time.sleep(0.001)
    seen: list[int] = []
    rx.settimeout(2.0)
    try:
        while len(seen) < DATAGRAMS:
            seen.append(struct.unpack_from(">Q", rx.recv(2048))[0])
    except TimeoutError:
        pass
    assert len(seen) >= DATAGRAMS * 0.9, f"{len(seen)} of {DATAGRAMS} datagrams arrived"
    out_of_order = sum(1 for x, y in itertools.pairwise(seen) if y <= x)
    assert out_of_order == 0, f"{out_of_order} datagrams arrived out of order"

    # A bulk TCP transfer stays intact, and the helpers did part of the work.
    before = {n.iface: n.thread_cpu_ns("wgpy-crypto") for n in (pair.a, pair.b)}
    result = tcp_transfer(pair.a.ns, pair.b.ns, INNER_V4[1], 100 * 1024 * 1024)
    assert result.received_bytes == result.sent_bytes
    assert result.received_sha256 == result.sent_sha256
    for node in (pair.a, pair.b):
        after = node.thread_cpu_ns("wgpy-crypto")
        worked = sum(after.values()) - sum(before[node.iface].values())
        assert worked > 1_000_000, f"{node.iface}: helpers ran {worked} ns during the transfer"


def test_unusable_setting_is_reported_and_ignored(netns_lab: NetnsLab) -> None:
    require_tun()
    ns = netns_lab.namespace()
    node = start_node(
        netns_lab,
        ns,
        WGPY,
        port=51830,
        addresses=["10.201.0.1/24"],
        env={"WGPY_CRYPTO_THREADS": "lots"},
    )
    log = node.process.log()
    assert 'WGPY_CRYPTO_THREADS="lots" is not a number of threads' in log, log
    assert "crypto helper threads: 0" in log, log
    assert node.process.alive()
