"""Prometheus metrics (wgpy.metrics): the daemon's `--metrics` endpoint and
`wgpy metrics IFACE`, parsed with prometheus_client's own parser, against
what `wg show dump` reports, and wgpy's own counters against packets the
test sends."""

from __future__ import annotations

import os
import socket
import sys

import pytest
from netns import Namespace, NetnsLab, require_programs, require_tun, wait_until
from prometheus_client.parser import text_string_to_metric_families
from wgnet import INNER_V4, OUTER_V4, WGPY, WIREGUARD_GO, Node, parse_dump, start_node
from wgpy.control import DeviceState, PeerState
from wgpy.metrics import render

METRICS_PORT = 9586  # prometheus_wireguard_exporter's default
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def http_get(ns: Namespace, path: str) -> tuple[str, str]:
    """(status line, body) of GET `path` on the namespace's metrics port."""
    sock = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", METRICS_PORT))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().splitlines()[0], body.decode()


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


@pytest.fixture
def pair(netns_lab: NetnsLab) -> tuple[Node, Node]:
    """wgpy (serving metrics) initiating to wireguard-go, a ping done."""
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    a_ns, b_ns = netns_lab.namespace(), netns_lab.namespace()
    netns_lab.veth(a_ns, b_ns, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
    a = start_node(netns_lab, a_ns, WGPY, port=51820, addresses=[f"{INNER_V4[0]}/24"],
                   daemon_args=["--metrics", f"127.0.0.1:{METRICS_PORT}"])  # fmt: skip
    b = start_node(netns_lab, b_ns, WIREGUARD_GO, port=51821, addresses=[f"{INNER_V4[1]}/24"])
    a.set_peer(b, [f"{INNER_V4[1]}/32"], endpoint=(OUTER_V4[1], b.port))
    b.set_peer(a, [f"{INNER_V4[0]}/32"])
    assert a.ping(INNER_V4[1], count=3)
    return a, b


def quiet_scrape(a: Node) -> tuple[Samples, str]:
    """A scrape and the `wg show dump` it must equal: taken between two equal
    dumps, so no packet moved the counters in between."""
    for _ in range(20):
        before = a.wg("show", a.iface, "dump")
        status, body = http_get(a.ns, "/metrics")
        if a.wg("show", a.iface, "dump") == before:
            assert status == "HTTP/1.1 200 OK", status
            return parse(body), before
    raise AssertionError("the counters never stood still")


def test_scrape_parses_and_equals_wg_show_dump(pair: tuple[Node, Node]) -> None:
    a, b = pair
    samples, dump = quiet_scrape(a)
    (peer,) = parse_dump(dump)
    labels = {"interface": a.iface, "public_key": b.public_key.to_base64()}
    assert value(samples, "wireguard_sent_bytes_total", **labels) == peer.tx > 0
    assert value(samples, "wireguard_received_bytes_total", **labels) == peer.rx > 0
    assert value(samples, "wireguard_latest_handshake_seconds", **labels) == peer.latest_handshake
    full = value(samples, "wireguard_sent_bytes_total", allowed_ips=f"{INNER_V4[1]}/32",
                 remote_ip=OUTER_V4[1], remote_port=str(b.port), **labels)  # fmt: skip
    assert full == peer.tx
    # What only wgpy knows: a initiated, and accepted the response.
    device = {"interface": a.iface}
    assert value(samples, "wgpy_handshake_initiations_sent_total", **device) >= 1
    assert value(samples, "wgpy_handshakes_received_total", result="accepted", **device) >= 1
    assert value(samples, "wgpy_handshakes_failed_total", **device) == 0
    assert value(samples, "wgpy_under_load", **device) == 0
    assert value(samples, "wgpy_handovers_total", **device) == 0
    assert value(samples, "wgpy_dropped_packets_total", reason="replay", **device) == 0

    # `wgpy metrics IFACE` prints the same, read over the UAPI socket.
    for _ in range(20):
        before = a.wg("show", a.iface, "dump")
        once = a.ns.run([sys.executable, "-m", "wgpy", "metrics", a.iface]).stdout
        if a.wg("show", a.iface, "dump") == before:
            break
    (peer,) = parse_dump(before)
    assert value(parse(once), "wireguard_sent_bytes_total", **labels) == peer.tx
    assert {n for n, _ in parse(once)} == {n for n, _ in samples}

    assert http_get(a.ns, "/other")[0] == "HTTP/1.1 404 Not Found"


def test_drops_are_counted_by_reason(pair: tuple[Node, Node]) -> None:
    """Datagrams the test sends to wgpy's port show up under their reason."""
    a, _b = pair
    before, _ = quiet_scrape(a)
    sender = a.lab.namespaces[1].socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = (OUTER_V4[0], a.port)
    sender.sendto(b"\x07" * 10, target)  # no message type: malformed
    sender.sendto(b"\x04\0\0\0" + os.urandom(4) + bytes(8) + os.urandom(16), target)  # no key
    sender.sendto(b"\x01\0\0\0" + os.urandom(144), target)  # an initiation with a bad mac1
    device = {"interface": a.iface}

    def counted(reason: str) -> float:
        samples = parse(http_get(a.ns, "/metrics")[1])
        return value(samples, "wgpy_dropped_packets_total", reason=reason, **device) - value(
            before, "wgpy_dropped_packets_total", reason=reason, **device
        )

    for reason in ("malformed", "no_key", "handshake_bad_mac1"):
        wait_until(lambda r=reason: counted(r) == 1, timeout=5, what=f"a {reason} drop")


def test_render_uses_the_exporters_names_and_labels() -> None:
    """prometheus_wireguard_exporter's metric names and labels, so its
    dashboards and alerts work unchanged."""
    peer = PeerState(
        "cGVlcg==", endpoint="[fd00::1]:51820", last_handshake=1700000000.5,
        rx_bytes=10, tx_bytes=20, allowed_ips=["10.0.0.2/32", "fd00::2/128"],
    )  # fmt: skip
    state = DeviceState("wg0", peers=[peer], stats={"rx_replayed": 3, "under_load": 1})
    samples = parse(render([state]).decode())
    labels = frozenset({
        "interface": "wg0", "public_key": "cGVlcg==", "allowed_ips": "10.0.0.2/32,fd00::2/128",
        "remote_ip": "fd00::1", "remote_port": "51820",
    }.items())  # fmt: skip
    assert samples[("wireguard_sent_bytes_total", labels)] == 20
    assert samples[("wireguard_received_bytes_total", labels)] == 10
    assert samples[("wireguard_latest_handshake_seconds", labels)] == 1700000000
    reason = frozenset({"interface": "wg0", "reason": "replay"}.items())
    assert samples[("wgpy_dropped_packets_total", reason)] == 3
    assert samples[("wgpy_under_load", frozenset({"interface": "wg0"}.items()))] == 1
    # Another implementation's reply has no wgpy_stat_* keys: no wgpy families.
    plain = parse(render([DeviceState("wg0", peers=[peer])]).decode())
    assert {n for n, _ in plain} == {
        "wireguard_sent_bytes_total",
        "wireguard_received_bytes_total",
        "wireguard_latest_handshake_seconds",
    }
