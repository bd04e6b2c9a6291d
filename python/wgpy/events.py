"""Events a running device reports to the program that embeds it.

- `Device.subscribe()` gives a channel of `DeviceEvent`s; every subscriber
  sees every event, in order.
- A subscriber that lags loses events rather than slowing the device: when
  its buffer (`max_buffer`, 256 by default) is full, new events for it are
  dropped, silently, and it later receives the events emitted once it has
  room again (no gap marker; other subscribers are not affected). A
  subscriber that must not miss a state change re-reads the state
  (`Device.stats()`, `Device.peers`) after it catches up. A closed
  subscriber is forgotten.
- Kinds: `handshake_completed`; `handshake_failed` (the retransmit timer
  gave up after 20 initiations without an answer; the peer's staged packets
  were dropped); `endpoint_changed` (moved by the peer's packets, not by
  configuration); `peer_removed` (by `remove_peer`, a UAPI `remove=true` or
  `replace_peers`; not at device shutdown); `tun_closed`; handover's
  `underlay_changed`, `path_lost`, `reannounced`.
- Events are views: they report what the data plane and the handover watcher
  did; nothing reads them back to steer the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import trio

from wgpy._core import PublicKey

Endpoint = tuple[str, int]
EventKind = Literal[
    "handshake_completed",
    "handshake_failed",
    "endpoint_changed",
    "peer_removed",
    "tun_closed",
    # Handover (wgpy.handover): the path to some peer changed; no route to a
    # peer (its packets are held); a peer was told our new path.
    "underlay_changed",
    "path_lost",
    "reannounced",
    # Endpoints by name (wgpy.names): a peer's endpoint moved to another of
    # its addresses (detail: why); resolving its names failed (detail: how;
    # the last addresses stay in use).
    "endpoint_switched",
    "endpoint_resolution_failed",
    # Registry (wgpy.registry): the etcd session started or was lost; an
    # entry was refused (detail: the entry's name and the reason).
    "registry_connected",
    "registry_disconnected",
    "registry_refused",
]


@dataclass(frozen=True)
class DeviceEvent:
    """Something an embedding program may want to react to."""

    kind: EventKind
    time: float
    peer: PublicKey | None = None
    endpoint: Endpoint | None = None
    detail: str = ""


class Subscribers:
    """The device's subscribers and the fan-out to them."""

    def __init__(self) -> None:
        self._channels: list[trio.MemorySendChannel[DeviceEvent]] = []

    def subscribe(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[DeviceEvent]:
        send, receive = trio.open_memory_channel[DeviceEvent](max_buffer)
        self._channels.append(send)
        return receive

    def emit(self, event: DeviceEvent) -> None:
        for channel in list(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                pass  # that subscriber lags: it loses this event
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._channels.remove(channel)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []
