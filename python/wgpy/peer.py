"""One configured peer: its handshake, its timers, and what it told us.

The data plane holds the peer's keypairs, endpoint and counters; this object
holds the decisions: when to initiate (at most one initiation per
REKEY_TIMEOUT), what the timers do when they fire, and the activity
timestamps already replayed into the timers.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from wgpy._core import Handshake, PresharedKey, PublicKey
from wgpy.constants import REKEY_TIMEOUT
from wgpy.timers import PeerTimers

if TYPE_CHECKING:
    from wgpy.device import Device

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# How often a busy peer's activity is re-read (seconds).
ACTIVITY_POLL = 1.0


@dataclass(frozen=True)
class PeerStats:
    """What `wg show` reports for a peer."""

    public_key: PublicKey
    endpoint: tuple[str, int] | None
    allowed_ips: list[IPNetwork]
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int
    has_preshared_key: bool
    invalid_source_packets: int


@dataclass
class _Seen:
    """Activity values (data-plane monotonic seconds) already given to the timers."""

    last_tx_auth: float = 0.0
    last_rx_auth: float = 0.0
    first_tx_data: float = 0.0
    first_rx_data: float = 0.0
    last_rx_data: float = 0.0
    last_tx_data: float = 0.0
    bytes: tuple[int, int] = (0, 0)


@dataclass
class Peer:
    device: Device
    id: int
    public_key: PublicKey
    handshake: Handshake
    preshared_key: PresharedKey | None = None
    persistent_keepalive: int = 0
    timers: PeerTimers = field(init=False)
    last_handshake: float | None = None
    last_sent_handshake: float | None = None
    seen: _Seen = field(default_factory=_Seen)
    wake: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    retry_scheduled: bool = False

    def __post_init__(self) -> None:
        self.timers = PeerTimers(self, persistent_keepalive=self.persistent_keepalive)

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()})"

    # --- what the timers ask for (TimerActions) -------------------------

    def send_keepalive(self) -> None:
        self.device.datapath.send_keepalive(self.id)
        self.poke()

    def send_handshake_initiation(self, *, is_retry: bool) -> None:
        self.device.initiate_handshake(self, is_retry=is_retry)

    def clear_endpoint_source(self) -> None:
        self.device.datapath.clear_endpoint_source(self.id)

    def purge_staged_packets(self) -> None:
        self.device.datapath.purge_staged(self.id)
        self.device.datapath.handshake_request_done(self.id)

    def zero_key_material(self) -> None:
        self.device.zero_key_material(self)

    # --------------------------------------------------------------------

    def poke(self) -> None:
        """Wakes the peer's timer task to re-read the data plane's activity."""
        self.wake.set()

    def can_send_initiation(self, now: float) -> bool:
        """At most one initiation per REKEY_TIMEOUT (kernel `last_sent_handshake`)."""
        return self.last_sent_handshake is None or now - self.last_sent_handshake >= REKEY_TIMEOUT

    def reconcile(self, now: float) -> bool:
        """Replays the data plane's activity into the timers, in time order;
        returns whether any authenticated packet went either way since the last call."""
        (tx, rx, last_tx, last_rx, first_tx, first_rx, last_rx_data, last_tx_data, _inv) = (
            self.device.datapath.activity(self.id)
        )
        changed = (tx, rx) != self.seen.bytes
        self.seen.bytes = (tx, rx)
        offset = now - time.monotonic()
        events: list[tuple[float, int, str]] = []
        s = self.seen
        if last_tx > s.last_tx_auth:
            events.append((last_tx, 0, "sent"))
        if last_rx > s.last_rx_auth:
            events.append((last_rx, 0, "received"))
        if first_tx and first_tx != s.first_tx_data:
            events.append((first_tx, 1, "data_sent"))
        if first_rx and first_rx != s.first_rx_data:
            events.append((first_rx, 1, "data_received"))
        if first_tx and last_tx_data > max(first_tx, s.last_tx_data):
            # Re-arms new_handshake if it fired while sends went on unanswered.
            events.append((last_tx_data, 2, "data_sent"))
        if first_rx and last_rx_data > max(first_rx, s.last_rx_data):
            # More data arrived while the passive keepalive was pending.
            events.append((last_rx_data, 2, "data_received"))
        s.last_tx_auth, s.last_rx_auth = max(s.last_tx_auth, last_tx), max(s.last_rx_auth, last_rx)
        s.first_tx_data, s.first_rx_data = first_tx, first_rx
        s.last_rx_data = max(s.last_rx_data, last_rx_data)
        s.last_tx_data = max(s.last_tx_data, last_tx_data)
        for at, _, kind in sorted(events):
            t = at + offset
            if kind == "sent":
                self.timers.any_authenticated_packet_traversal(t)
                self.timers.any_authenticated_packet_sent(t)
            elif kind == "received":
                self.timers.any_authenticated_packet_received(t)
                self.timers.any_authenticated_packet_traversal(t)
            elif kind == "data_sent":
                self.timers.data_sent(t)
            else:
                self.timers.data_received(t)
        return changed

    async def run_timers(self) -> None:
        """The peer's timer task: sleep to the next deadline or a poke, then act.

        While packets flow it re-reads the data plane's activity every
        ACTIVITY_POLL seconds (timers armed by packets are at least 10 s out,
        and the timestamps are exact, so this loses no precision); once a read
        finds nothing new it stops, and the data plane wakes it at the next
        packet.
        """
        dp = self.device.datapath
        with self.cancel_scope:
            # A peer removed before this task first ran is gone from the data plane.
            await trio.lowlevel.checkpoint()
            while True:
                now = trio.current_time()
                active = self.reconcile(now)
                self.timers.fire_due(now)
                active |= self.reconcile(trio.current_time())
                if not active:
                    dp.watch_activity(self.id, False)
                    # A packet between the read and the unwatch woke nobody.
                    if self.reconcile(trio.current_time()):
                        dp.watch_activity(self.id, True)
                        active = True
                deadline = self.timers.next_deadline()
                wake_at = deadline if deadline is not None else math.inf
                if active:
                    wake_at = min(wake_at, now + ACTIVITY_POLL)
                with trio.move_on_at(wake_at):
                    await self.wake.wait()
                self.wake = trio.Event()

    def stats(self, *, include_allowed_ips: bool = True) -> PeerStats:
        dp = self.device.datapath
        tx, rx, *_times, invalid = dp.activity(self.id)
        endpoint = dp.endpoint(self.id)
        nets = (
            [ipaddress.ip_network(f"{ip}/{cidr}") for ip, cidr in dp.allowed_ips(self.id)]
            if include_allowed_ips
            else []
        )
        return PeerStats(
            public_key=self.public_key,
            endpoint=(str(endpoint[0]), int(endpoint[1])) if endpoint else None,
            allowed_ips=nets,
            last_handshake=self.last_handshake,
            rx_bytes=rx,
            tx_bytes=tx,
            persistent_keepalive=self.persistent_keepalive,
            has_preshared_key=self.preshared_key is not None,
            invalid_source_packets=invalid,
        )
