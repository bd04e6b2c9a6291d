"""Prometheus metrics of wgpy interfaces, through prometheus_client.

The rules:
- Source: a `DeviceState` (wgpy.control), the parsed UAPI get reply. The
  daemon's endpoint (`wgpy --metrics HOST:PORT IFACE`) parses its own reply
  in process; `wgpy metrics IFACE` asks the daemon over its socket. Both
  therefore show exactly what `wg show` and `wgpy show` show.
- Per peer, prometheus_wireguard_exporter's names and labels, so its
  dashboards and alerts work unchanged: `wireguard_sent_bytes_total`,
  `wireguard_received_bytes_total` and `wireguard_latest_handshake_seconds`
  (Unix time, 0 before the first), labelled `interface`, `public_key`,
  `allowed_ips` (comma-separated), `remote_ip`, `remote_port` (empty
  without an endpoint).
- What only wgpy knows, from the `wgpy_stat_*` keys (absent against other
  implementations): drops by reason, handshakes sent, received (accepted or
  rejected) and failed (gave up after the retries), cookie replies,
  whether the device is under load, handover's decisions.
- The endpoint is a minimal HTTP/1.1 server on Trio (prometheus_client's
  own server runs threads): `GET /metrics` (or `/`) answers the text
  format; other paths 404, other methods 405. One request per connection; a request
  must arrive within REQUEST_TIMEOUT and fit in MAX_REQUEST bytes. A
  failing scrape is answered 500 and logged; it never stops the daemon.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wgpy.control import DeviceState, PeerState

log = logging.getLogger("wgpy.metrics")

REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 8192
PEER_LABELS = ["interface", "public_key", "allowed_ips", "remote_ip", "remote_port"]

# wgpy_dropped_packets_total{reason}: DeviceStats counter -> reason label.
DROP_REASONS = {
    "rx_invalid_packet": "invalid_source",
    "rx_replayed": "replay",
    "rx_auth_failed": "bad_mac",
    "rx_unknown_index": "no_key",
    "rx_malformed": "malformed",
    "rx_tun_errors": "tun_error",
    "tx_no_route": "no_route",
    "tx_dropped": "send_error",
    "handshake_bad_mac1": "handshake_bad_mac1",
    "handshake_queue_full": "handshake_queue_full",
    "handshake_rate_limited": "handshake_rate_limited",
}
# Device counters with a label: (name, help, label, {stat: label value}).
LABELLED_COUNTERS = (
    ("wgpy_dropped_packets", "Packets dropped, by reason", "reason", DROP_REASONS),
    (
        "wgpy_handshakes_received",
        "Handshake initiations and responses received, by result",
        "result",
        {"handshake_accepted": "accepted", "handshake_rejected": "rejected"},
    ),
    (
        "wgpy_cookie_replies",
        "Cookie replies, by direction",
        "direction",
        {"cookie_replies_sent": "sent", "cookie_replies_received": "received"},
    ),
)
# Single-valued device counters: stat -> (metric name, help).
DEVICE_COUNTERS = {
    "handshake_initiations_sent": (
        "wgpy_handshake_initiations_sent",
        "Handshake initiations sent",
    ),
    "handshakes_failed": (
        "wgpy_handshakes_failed",
        "Handshakes given up after the retries (no answer to 20 initiations)",
    ),
    "handover_reannounced": (
        "wgpy_handovers",
        "Peers re-announced after an underlay change (handover)",
    ),
    "handover_underlay_changed": ("wgpy_underlay_changes", "Underlay changes seen by handover"),
    "handover_path_lost": ("wgpy_paths_lost", "Peers found without a route (packets held)"),
}
DEVICE_GAUGES = {
    "under_load": ("wgpy_under_load", "1 while the device is under load (cookie replies)"),
    "indices": ("wgpy_receiver_indices", "Receiver indices in use"),
    "handshake_queue": ("wgpy_handshake_queue", "Handshake messages waiting"),
}


def _remote(endpoint: str | None) -> tuple[str, str]:
    if not endpoint:
        return "", ""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), port


def _peer_labels(device: str, peer: PeerState) -> list[str]:
    return [device, peer.public_key, ",".join(peer.allowed_ips), *_remote(peer.endpoint)]


class StateCollector(Collector):
    """The metric families of a set of device states (read once)."""

    def __init__(self, states: Sequence[DeviceState]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        yield from self._peer_families()
        yield from self._device_families()
        yield from self._registry_families()
        yield from self._name_families()

    def _registry_families(self) -> Iterator[Metric]:
        """A registry's state (wgpy.registry): connected or not, its counts."""
        connected = GaugeMetricFamily(
            "wgpy_registry_connected",
            "1 while the peer registry (etcd) is reachable, 0 during an outage",
            labels=["interface", "url"],
        )
        counts = {
            field: CounterMetricFamily(f"wgpy_registry_{field}", text, labels=["interface"])
            for field, text in (
                ("reconnects", "Sessions with the registry after the first"),
                ("reloads", "Snapshots loaded anew after the watch's revision was compacted"),
            )
        }
        peers = GaugeMetricFamily(
            "wgpy_registry_peers", "Peers applied from the registry", labels=["interface"]
        )
        refused = GaugeMetricFamily(
            "wgpy_registry_refused", "Registry entries refused", labels=["interface"]
        )
        for state in self._states:
            r = state.registry
            if r is None:
                continue
            connected.add_metric([state.name, r.url], int(r.state == "connected"))
            peers.add_metric([state.name], r.peers)
            refused.add_metric([state.name], r.refused)
            counts["reconnects"].add_metric([state.name], r.reconnects)
            counts["reloads"].add_metric([state.name], r.reloads)
        families = [connected, peers, refused, *counts.values()]
        yield from (f for f in families if f.samples)

    def _name_families(self) -> Iterator[Metric]:
        """Endpoints by name (wgpy.names): whether the last resolution failed."""
        failing = GaugeMetricFamily(
            "wgpy_endpoint_resolution_failing",
            "1 while the peer's endpoint names do not resolve (the last addresses stay in use)",
            labels=["interface", "public_key"],
        )
        for state in self._states:
            for peer in state.peers:
                if peer.endpoint_names:
                    failing.add_metric(
                        [state.name, peer.public_key], int(peer.endpoint_error is not None)
                    )
        yield from [failing] if failing.samples else []

    def _peer_families(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "wireguard_sent_bytes", "Bytes sent to the peer", labels=PEER_LABELS
        )
        received = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer",
                                       labels=PEER_LABELS)  # fmt: skip
        handshake = GaugeMetricFamily(
            "wireguard_latest_handshake_seconds",
            "UNIX time of the latest handshake with the peer (0: none yet)",
            labels=PEER_LABELS,
        )
        invalid = CounterMetricFamily(
            "wgpy_invalid_source_packets",
            "Data packets from the peer whose inner source routes to another peer (dropped)",
            labels=["interface", "public_key"],
        )
        for state in self._states:
            for peer in state.peers:
                labels = _peer_labels(state.name, peer)
                sent.add_metric(labels, peer.tx_bytes)
                received.add_metric(labels, peer.rx_bytes)
                handshake.add_metric(labels, int(peer.last_handshake or 0))
                if peer.invalid_source_packets is not None:
                    invalid.add_metric([state.name, peer.public_key], peer.invalid_source_packets)
        yield from (sent, received, handshake, invalid)

    def _device_families(self) -> Iterator[Metric]:
        for name, text, label, values in LABELLED_COUNTERS:
            labelled = CounterMetricFamily(name, text, labels=["interface", label])
            for state in self._states:
                for stat, value in values.items():
                    if stat in state.stats:
                        labelled.add_metric([state.name, value], state.stats[stat])
            yield from [labelled] if labelled.samples else []
        kinds = ((CounterMetricFamily, DEVICE_COUNTERS), (GaugeMetricFamily, DEVICE_GAUGES))
        for kind, table in kinds:
            for stat, (name, text) in table.items():
                family = kind(name, text, labels=["interface"])
                for state in self._states:
                    if stat in state.stats:
                        family.add_metric([state.name], state.stats[stat])
                yield from [family] if family.samples else []


def render(states: Sequence[DeviceState]) -> bytes:
    """The text exposition format of `states`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(states))
    return generate_latest(registry)


# --- the HTTP endpoint ---------------------------------------------------------------


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the endpoint (opened before privileges drop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


Snapshot = Callable[[], Awaitable[list[DeviceState]]]


async def serve_metrics(
    listener: socket.socket,
    snapshot: Snapshot,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answers scrapes on `listener` with `render(await snapshot())` until cancelled."""
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(listener))]
    task_status.started()
    await trio.serve_listeners(functools.partial(_handle, snapshot=snapshot), listeners)


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST:
            return None
    return data


async def _answer(head: bytes, snapshot: Snapshot) -> tuple[str, bytes, str]:
    """(status line, body, content type) for a request's head."""
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) != 3:
        return "400 Bad Request", b"bad request\n", "text/plain"
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target not in (b"/", b"/metrics"):
        return "404 Not Found", b"not found: try /metrics\n", "text/plain"
    if method != b"GET":
        return "405 Method Not Allowed", b"GET only\n", "text/plain"
    try:
        body = render(await snapshot())
    except Exception:
        log.exception("metrics: scrape failed")
        return "500 Internal Server Error", b"scrape failed\n", "text/plain"
    return "200 OK", body, CONTENT_TYPE_LATEST


async def _handle(stream: trio.SocketStream, *, snapshot: Snapshot) -> None:
    async with stream:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = await _read_head(stream)
                if head is None:
                    return
                status, body, content_type = await _answer(head, snapshot)
                header = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(header.encode() + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
