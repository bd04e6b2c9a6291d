"""One configured peer, as the control plane sees it.

- Configuration, owned here: the public key, the preshared key, the
  persistent keepalive interval. The data plane takes a copy of the keys when
  they are set (the preshared key takes effect at the next handshake).
- Everything that changes with packets is owned by the data plane (Rust):
  endpoint, keypairs, handshake state, counters. `stats` reads it; nothing
  here mirrors it.
- The peer's timers (wgpy.timers) run in the peer's own task and cancel
  scope; their actions are requests to the data plane, none of which waits
  on a socket.
- What the peer notices while replaying (a handshake completed, an endpoint
  moved by the peer's packets, its packets held for lack of a path) goes to
  a listener (the device), which turns it into events; at most one report
  per read, however many packets caused it. So does a handshake retry (the
  last one went unanswered), before the retry is asked for, and the timers'
  give-up after the retries (`handshake_failed`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

import trio

from wgpy._core import Datapath, PeerState, PresharedKey, PublicKey
from wgpy.timers import ActivityReplay, PeerTimers, run_timers

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]


@dataclass(frozen=True)
class PeerStats:
    """What `wg show` reports for a peer."""

    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: list[IPNetwork]
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int
    has_preshared_key: bool
    invalid_source_packets: int


class PeerListener(Protocol):
    """What a peer reports to its device."""

    def handshake_completed(self, peer: Peer, state: PeerState) -> None: ...

    def endpoint_changed(self, peer: Peer, endpoint: Endpoint | None) -> None: ...

    def held(self, peer: Peer) -> None: ...

    def handshake_unanswered(self, peer: Peer) -> None: ...

    def handshake_failed(self, peer: Peer) -> None: ...


class Peer:
    """A peer of a running device; made by `Device.add_peer`."""

    def __init__(
        self,
        datapath: Datapath,
        listener: PeerListener,
        peer_id: int,
        public_key: PublicKey,
        preshared_key: PresharedKey | None,
    ) -> None:
        self.id = peer_id
        self.public_key = public_key
        self.preshared_key = preshared_key
        self._dp = datapath
        self._listener = listener
        self.timers = PeerTimers(self)
        self._replay = ActivityReplay(self.timers)
        self._endpoint: Endpoint | None = None
        self._held = False
        self.cancel_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()})"

    @property
    def persistent_keepalive(self) -> int:
        return self.timers.persistent_keepalive_interval

    @property
    def removed(self) -> bool:
        return self.timers.stopped

    # --- the task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The peer's timers, until it is removed (its cancel scope is cancelled)."""
        with self.cancel_scope:
            await run_timers(self.timers, source=self, task_status=task_status)

    def remove(self) -> None:
        """Stops the timers and the task; the device removes the data-plane side."""
        self.timers.stop()
        self.cancel_scope.cancel()

    def poke(self) -> None:
        """The data plane has news about this peer (its "peer" event)."""
        self.timers.wake()

    # --- ActivitySource ----------------------------------------------------------------

    def replay(self, now: float) -> bool:
        state = self._dp.peer_state(self.id)
        moved, completed = self._replay.replay(state)
        if completed:
            self._listener.handshake_completed(self, state)
        if state.endpoint != self._endpoint:
            self._endpoint = state.endpoint
            self._listener.endpoint_changed(self, state.endpoint)
        if state.held and not self._held:
            self._listener.held(self)
        self._held = state.held
        return moved

    def watch(self, on: bool) -> None:
        self._dp.watch_activity(self.id, on)

    def endpoint_configured(self) -> None:
        """The device set the endpoint: not news to report (only what the
        peer's packets change is)."""
        self._endpoint = self._dp.peer_state(self.id).endpoint

    # --- TimerActions: requests to the data plane ----------------------------------------

    def send_keepalive(self) -> None:
        self._dp.send_keepalive(self.id)

    def send_handshake_initiation(self, *, is_retry: bool) -> None:
        if is_retry:  # first: the listener may move the endpoint the retry goes to
            self._listener.handshake_unanswered(self)
        self._dp.request_handshake(self.id, retry=is_retry)

    def clear_endpoint_source(self) -> None:
        self._dp.clear_endpoint_source(self.id)

    def purge_staged_packets(self) -> None:
        self._dp.purge_staged(self.id)

    def handshake_failed(self) -> None:
        self._listener.handshake_failed(self)

    def zero_key_material(self) -> None:
        self._dp.erase_keys(self.id)

    # --- what `wg show` reports --------------------------------------------------------

    def stats(self, *, include_allowed_ips: bool = True) -> PeerStats:
        state = self._dp.peer_state(self.id)
        nets = (
            [ipaddress.ip_network(f"{ip}/{cidr}") for ip, cidr in self._dp.allowed_ips(self.id)]
            if include_allowed_ips
            else []
        )
        return PeerStats(
            public_key=self.public_key,
            endpoint=state.endpoint,
            allowed_ips=nets,
            last_handshake=state.last_handshake,
            rx_bytes=state.rx_bytes,
            tx_bytes=state.tx_bytes,
            persistent_keepalive=self.persistent_keepalive,
            has_preshared_key=self.preshared_key is not None,
            invalid_source_packets=state.invalid_source_packets,
        )
