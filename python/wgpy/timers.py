"""The per-peer timers: the kernel's `timers.c` state machine, driven by explicit timestamps,
and the Trio task that drives it from the data plane's activity.

- retransmit_handshake: armed for REKEY_TIMEOUT + jitter when an initiation is sent; on expiry
  resend it as a retry, 19 times (20 sends in all), then give up: purge the staged packets,
  report the failure (`handshake_failed`, once per give-up) and wipe the keys 540 s later.
- send_keepalive: armed for KEEPALIVE_TIMEOUT when data (not a keepalive) is received, unless
  pending (then one more is owed); any authenticated send deletes it.
- new_handshake: armed for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter when data is sent, unless
  pending; any authenticated receive deletes it; on expiry start a new handshake.
- zero_key_material: re-armed for 3 * REJECT_AFTER_TIME when a session is derived; on expiry
  erase the handshake and all keypairs.
- persistent_keepalive: re-armed for the peer's interval by every authenticated packet sent or
  received; on expiry send a keepalive, so it only fires on an idle tunnel. Turning the
  interval on from 0 sends a keepalive at once (kernel netlink.c, wireguard-go pkaOn), which
  with no session yet starts a handshake: a new peer with a keepalive announces itself.

How the device drives it. The data plane runs in Rust and never calls Python per packet, so the
device learns of packets and handshakes from timestamps it reads from Rust (`PeerState`) and
replays them into the hooks, in timestamp order, possibly late (`ActivityReplay`). Every hook
therefore takes the time `at` (Trio clock) at which the event happened, and the object behaves as
a discrete-event simulation of the kernel:

- An expiry happens at its deadline: re-arms inside an expiry handler count from the deadline, so
  a driver that wakes a little late changes nothing.
- A deadline at or before `at` has already passed when the event happened: every hook first fires
  the timers due by `at`, in deadline order (ties in arming order), then applies the event.
- The device must replay an event before firing any deadline later than the event (`run_timers`
  replays before it fires), and must call `data_received` only for non-empty packets: a
  received keepalive calls only `any_authenticated_packet_received` and `..._traversal`, so two
  idle peers do not answer each other's keepalives forever.
- Expiry handlers change state first and call the actions last. In the kernel the packet a
  handler sends is encrypted asynchronously, so its own hooks (which may delete the timer just
  re-armed) run after the handler; state-first gives that outcome whether the device reports the
  send from inside the action or later.

Initiations that are not retries reset the attempt count, as
`wg_packet_send_queued_handshake_initiation` does: the timers' own (`initiate_handshake`) and the
data plane's (no key, rekey on send or receive), which the replay reports as
`handshake_requested`. The data plane owns the one-initiation-per-REKEY_TIMEOUT rule and the
receive side's once-per-handshake rekey.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import trio

from wgpy._core import PeerState
from wgpy.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    NEW_HANDSHAKE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_TIME,
)

__all__ = ["ActivityReplay", "ActivitySource", "PeerTimers", "Timer", "TimerActions", "run_timers"]

# The UAPI (and the kernel) store the interval as a u16 of seconds.
MAX_PERSISTENT_KEEPALIVE = 65535
# How often a busy peer's activity is re-read (seconds): timers armed by packets are at least
# 10 s out and the timestamps are exact, so this loses no precision.
ACTIVITY_POLL = 1.0


class TimerActions(Protocol):
    """What the timers ask the peer to do. Actions must not block; they may call hooks."""

    def send_keepalive(self) -> None: ...

    def send_handshake_initiation(self, *, is_retry: bool) -> None:
        """Send an initiation unless one went out less than REKEY_TIMEOUT ago (the data plane's
        rule); the device reports the send back through `handshake_initiated`."""
        ...

    def clear_endpoint_source(self) -> None: ...

    def purge_staged_packets(self) -> None: ...

    def handshake_failed(self) -> None:
        """The retries are exhausted: no handshake completed (a report, no action)."""
        ...

    def zero_key_material(self) -> None: ...


class Timer(enum.Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEY_MATERIAL = "zero_key_material"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


class PeerTimers:
    """The five timers of one peer, as deadlines; no I/O and no clock of its own."""

    def __init__(
        self,
        actions: TimerActions,
        *,
        persistent_keepalive: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        _check_interval(persistent_keepalive)
        self._actions = actions
        # Jitter only desynchronizes peers (the kernel uses prandom), so no CSPRNG is needed.
        self._rng = rng if rng is not None else random.Random()
        self.persistent_keepalive_interval = persistent_keepalive
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        # timer -> (deadline, arming sequence number); the number orders equal deadlines.
        self._pending: dict[Timer, tuple[float, int]] = {}
        self._sequence = itertools.count()
        self._now = -math.inf
        self._stopped = False
        self._changed: trio.Event | None = None

    # ---- state ------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The time of the latest event or expiry processed (-inf before the first).

        While an expiry handler calls an action, this is the handler's deadline: the time the
        kernel would have acted at.
        """
        return self._now

    @property
    def stopped(self) -> bool:
        return self._stopped

    def deadline(self, timer: Timer) -> float | None:
        """When `timer` fires, or None if it is not pending."""
        entry = self._pending.get(timer)
        return None if entry is None else entry[0]

    def is_pending(self, timer: Timer) -> bool:
        return timer in self._pending

    def next_deadline(self) -> float | None:
        entry = self._earliest()
        return None if entry is None else entry[1]

    # ---- hooks (kernel wg_timers_*) ---------------------------------------------------------

    def data_sent(self, at: float) -> None:
        """An authenticated data packet (not a keepalive) was sent."""
        self._advance(at)
        if not self.is_pending(Timer.NEW_HANDSHAKE):
            self._arm(Timer.NEW_HANDSHAKE, at + NEW_HANDSHAKE_TIMEOUT + self._jitter())

    def data_received(self, at: float) -> None:
        """An authenticated packet with a non-empty payload was received (never a keepalive)."""
        self._advance(at)
        if not self.is_pending(Timer.SEND_KEEPALIVE):
            self._arm(Timer.SEND_KEEPALIVE, at + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self, at: float) -> None:
        """Any authenticated packet was sent: data, keepalive or handshake."""
        self._advance(at)
        # The kernel leaves need_another_keepalive set here; so do we.
        self._delete(Timer.SEND_KEEPALIVE)

    def any_authenticated_packet_received(self, at: float) -> None:
        """Any authenticated packet was received: data, keepalive or handshake."""
        self._advance(at)
        self._delete(Timer.NEW_HANDSHAKE)

    def any_authenticated_packet_traversal(self, at: float) -> None:
        """Any authenticated packet was sent or received."""
        self._advance(at)
        if self.persistent_keepalive_interval > 0:
            self._arm(Timer.PERSISTENT_KEEPALIVE, at + self.persistent_keepalive_interval)

    def handshake_initiated(self, at: float) -> None:
        """An initiation was sent."""
        self._advance(at)
        self._arm(Timer.RETRANSMIT_HANDSHAKE, at + REKEY_TIMEOUT + self._jitter())

    def handshake_complete(self, at: float) -> None:
        """A response was consumed, or the responder got its first data packet under the new key."""
        self._advance(at)
        self._delete(Timer.RETRANSMIT_HANDSHAKE)
        self.handshake_attempts = 0

    def session_derived(self, at: float) -> None:
        """A keypair was derived: before sending a response, or after consuming one."""
        self._advance(at)
        self._arm(Timer.ZERO_KEY_MATERIAL, at + ZERO_KEY_MATERIAL_TIME)

    def set_persistent_keepalive(self, interval: int, at: float) -> None:
        """Change the interval; turning it on from 0 sends one keepalive at once.

        A pending timer is left alone, as in the kernel: the next traversal uses the new
        interval, and an expiry with the interval at 0 sends nothing.
        """
        _check_interval(interval)
        self._advance(at)
        turned_on = self.persistent_keepalive_interval == 0 and interval > 0
        self.persistent_keepalive_interval = interval
        if turned_on and not self._stopped:
            self._actions.send_keepalive()

    def initiate_handshake(self, at: float) -> None:
        """Start a new handshake (not a retry): resets the attempts, then asks for the send."""
        self._advance(at)
        self._send_initiation(is_retry=False)

    def handshake_requested(self) -> None:
        """The data plane asked for an initiation that is not a retry: the attempts restart."""
        self.handshake_attempts = 0

    def stop(self) -> None:
        """The peer was removed: delete every timer and ignore all later hooks."""
        self._stopped = True
        self._pending.clear()
        self._notify()

    def fire_due(self, now: float) -> None:
        """Run every timer whose deadline is at or before `now`, in deadline order."""
        self._advance(now)

    # ---- Trio wake-up -----------------------------------------------------------------------

    def changed_event(self) -> trio.Event:
        """An event set the next time a timer is armed or deleted, the peer is stopped, or
        `wake` is called."""
        if self._changed is None or self._changed.is_set():
            self._changed = trio.Event()
        return self._changed

    def wake(self) -> None:
        """Wakes the driver: there is news to replay (the data plane's notification)."""
        self._notify()

    # ---- internals --------------------------------------------------------------------------

    def _jitter(self) -> float:
        return self._rng.uniform(0, REKEY_TIMEOUT_JITTER_MAX)

    def _arm(self, timer: Timer, deadline: float) -> None:
        # Like the kernel's mod_peer_timer: a dead peer arms nothing.
        if self._stopped:
            return
        self._pending[timer] = (deadline, next(self._sequence))
        self._notify()

    def _delete(self, timer: Timer) -> None:
        if self._pending.pop(timer, None) is not None:
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _earliest(self) -> tuple[Timer, float] | None:
        if not self._pending:
            return None
        timer, (deadline, _) = min(self._pending.items(), key=lambda item: item[1])
        return timer, deadline

    def _advance(self, at: float) -> None:
        """Fire everything due by `at`, then move the clock to `at`."""
        # Handlers may call hooks (through actions), which re-enter here; re-reading the
        # table on every turn keeps that correct.
        while (entry := self._earliest()) is not None and entry[1] <= at:
            timer, deadline = entry
            del self._pending[timer]
            self._now = max(self._now, deadline)
            self._EXPIRY[timer](self, deadline)
        self._now = max(self._now, at)

    def _send_initiation(self, *, is_retry: bool) -> None:
        if not is_retry:
            self.handshake_attempts = 0
        if not self._stopped:
            self._actions.send_handshake_initiation(is_retry=is_retry)

    # ---- expiry handlers (kernel wg_expired_*); `at` is the deadline ------------------------

    def _expired_retransmit_handshake(self, at: float) -> None:
        if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
            self._give_up_handshake(at)
            return
        self.handshake_attempts += 1
        # The cached source address may be why nobody answers.
        self._actions.clear_endpoint_source()
        self._send_initiation(is_retry=True)

    def _give_up_handshake(self, at: float) -> None:
        self._delete(Timer.SEND_KEEPALIVE)
        # Destroy whatever a partial exchange left behind, but do not postpone an earlier wipe.
        if not self.is_pending(Timer.ZERO_KEY_MATERIAL):
            self._arm(Timer.ZERO_KEY_MATERIAL, at + ZERO_KEY_MATERIAL_TIME)
        self._actions.purge_staged_packets()
        self._actions.handshake_failed()

    def _expired_send_keepalive(self, at: float) -> None:
        if self.need_another_keepalive:
            self.need_another_keepalive = False
            self._arm(Timer.SEND_KEEPALIVE, at + KEEPALIVE_TIMEOUT)
        self._actions.send_keepalive()

    def _expired_new_handshake(self, at: float) -> None:
        self._actions.clear_endpoint_source()
        self._send_initiation(is_retry=False)

    def _expired_zero_key_material(self, at: float) -> None:
        self._actions.zero_key_material()

    def _expired_persistent_keepalive(self, at: float) -> None:
        if self.persistent_keepalive_interval > 0:
            self._actions.send_keepalive()

    _EXPIRY: ClassVar[dict[Timer, Callable[[PeerTimers, float], None]]] = {
        Timer.RETRANSMIT_HANDSHAKE: _expired_retransmit_handshake,
        Timer.SEND_KEEPALIVE: _expired_send_keepalive,
        Timer.NEW_HANDSHAKE: _expired_new_handshake,
        Timer.ZERO_KEY_MATERIAL: _expired_zero_key_material,
        Timer.PERSISTENT_KEEPALIVE: _expired_persistent_keepalive,
    }


def _check_interval(interval: int) -> None:
    if not 0 <= interval <= MAX_PERSISTENT_KEEPALIVE:
        raise ValueError(f"persistent keepalive interval must be 0..65535 s, not {interval}")


# ---- replaying the data plane's activity -------------------------------------------------------


@dataclass
class _Seen:
    """Activity already replayed (data-plane monotonic seconds): the cursor of the replay."""

    last_tx_auth: float = 0.0
    last_rx_auth: float = 0.0
    first_tx_data: float = 0.0
    first_rx_data: float = 0.0
    last_rx_data: float = 0.0
    last_tx_data: float = 0.0
    initiation_sent: float = 0.0
    session_derived: float = 0.0
    handshake_complete: float = 0.0
    handshake_requests: int = 0
    bytes: tuple[int, int] = (0, 0)


# Replay order for events at the same instant: what the kernel's paths call first.
_ORDER = {
    "session_derived": 0,
    "handshake_complete": 0,
    "sent": 1,
    "received": 1,
    "data_sent": 2,
    "data_received": 2,
    "more_data_sent": 3,
    "more_data_received": 3,
    "initiation_sent": 4,
}


class ActivityReplay:
    """Turns the data plane's activity timestamps into the timers' hooks, in time order.

    The rule for each hook (kernel send.c/receive.c):
    - any authenticated send (last_tx_auth moved): traversal, then sent;
    - any authenticated receive (last_rx_auth moved): received, then traversal;
    - the first data sent since the last receive: data_sent; the first data received since the
      last send: data_received; and later data again, if it came after the last replay, so a
      new_handshake or send_keepalive that fired meanwhile is re-armed;
    - an initiation sent: handshake_initiated; a session derived: session_derived; a handshake
      completed: handshake_complete; initiations asked for (not retries): handshake_requested.
    Data-plane times are converted to the Trio clock with the offset read now; the monotonic
    clock is read first, so the offset can only err late, never early: a retry the timers ask
    for at REKEY_TIMEOUT after a send is never refused by the data plane's rate limit for being
    a microsecond early.
    """

    def __init__(self, timers: PeerTimers) -> None:
        self._timers = timers
        self._seen = _Seen()

    def replay(self, state: PeerState) -> tuple[bool, bool]:
        """Replays `state`; returns (packets moved since the last replay, a handshake
        completed since the last replay)."""
        mono = time.monotonic()
        offset = trio.current_time() - mono
        s, timers = self._seen, self._timers
        moved = (state.tx_bytes, state.rx_bytes) != s.bytes
        s.bytes = (state.tx_bytes, state.rx_bytes)
        if state.handshake_requests != s.handshake_requests:
            s.handshake_requests = state.handshake_requests
            timers.handshake_requested()
        events = self._events(state)
        completed = state.handshake_complete > s.handshake_complete
        self._advance_cursor(state)
        for at, kind in sorted(events, key=lambda e: (e[0], _ORDER[e[1]])):
            _HOOKS[kind](timers, at + offset)
        return moved, completed

    def _events(self, state: PeerState) -> list[tuple[float, str]]:
        s = self._seen
        events: list[tuple[float, str]] = []

        def newer(value: float, than: float, kind: str) -> None:
            if value > than:
                events.append((value, kind))

        newer(state.last_tx_auth, s.last_tx_auth, "sent")
        newer(state.last_rx_auth, s.last_rx_auth, "received")
        if state.first_tx_data_since_rx and state.first_tx_data_since_rx != s.first_tx_data:
            events.append((state.first_tx_data_since_rx, "data_sent"))
        if state.first_rx_data_since_tx and state.first_rx_data_since_tx != s.first_rx_data:
            events.append((state.first_rx_data_since_tx, "data_received"))
        if state.first_tx_data_since_rx:
            newer(
                state.last_tx_data,
                max(state.first_tx_data_since_rx, s.last_tx_data),
                "more_data_sent",
            )
        if state.first_rx_data_since_tx:
            newer(
                state.last_rx_data,
                max(state.first_rx_data_since_tx, s.last_rx_data),
                "more_data_received",
            )
        newer(state.initiation_sent, s.initiation_sent, "initiation_sent")
        newer(state.session_derived, s.session_derived, "session_derived")
        newer(state.handshake_complete, s.handshake_complete, "handshake_complete")
        return events

    def _advance_cursor(self, state: PeerState) -> None:
        s = self._seen
        s.last_tx_auth = max(s.last_tx_auth, state.last_tx_auth)
        s.last_rx_auth = max(s.last_rx_auth, state.last_rx_auth)
        s.first_tx_data, s.first_rx_data = (
            state.first_tx_data_since_rx,
            state.first_rx_data_since_tx,
        )
        s.last_rx_data = max(s.last_rx_data, state.last_rx_data)
        s.last_tx_data = max(s.last_tx_data, state.last_tx_data)
        s.initiation_sent = max(s.initiation_sent, state.initiation_sent)
        s.session_derived = max(s.session_derived, state.session_derived)
        s.handshake_complete = max(s.handshake_complete, state.handshake_complete)


def _sent(t: PeerTimers, at: float) -> None:
    t.any_authenticated_packet_traversal(at)
    t.any_authenticated_packet_sent(at)


def _received(t: PeerTimers, at: float) -> None:
    t.any_authenticated_packet_received(at)
    t.any_authenticated_packet_traversal(at)


_HOOKS: dict[str, Callable[[PeerTimers, float], None]] = {
    "sent": _sent,
    "received": _received,
    "data_sent": PeerTimers.data_sent,
    "more_data_sent": PeerTimers.data_sent,
    "data_received": PeerTimers.data_received,
    "more_data_received": PeerTimers.data_received,
    "initiation_sent": PeerTimers.handshake_initiated,
    "session_derived": PeerTimers.session_derived,
    "handshake_complete": PeerTimers.handshake_complete,
}


# ---- the Trio driver ----------------------------------------------------------------------------


class ActivitySource(Protocol):
    """Where the driver gets the news it replays before firing (the device's peer)."""

    def replay(self, now: float) -> bool:
        """Replay into the timers everything that happened up to `now`; True if packets
        moved since the last call."""
        ...

    def watch(self, on: bool) -> None:
        """Whether the driver polls (True) or waits to be woken by the next packet (False)."""
        ...


async def run_timers(
    timers: PeerTimers,
    *,
    source: ActivitySource | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fire `timers` on Trio's clock until the peer is stopped (or the task is cancelled).

    Sleeps until the next deadline, waking early whenever a timer is armed or deleted or the
    source wakes it (`PeerTimers.wake`). Before firing it replays the source's news, so that no
    event is applied after a deadline it should have affected. While packets move it re-reads
    the source every ACTIVITY_POLL seconds; once a read finds nothing new it stops watching, and
    the source wakes it at the next packet: no wake-up per packet.
    """
    task_status.started()
    while not timers.stopped:
        now = trio.current_time()
        active = source.replay(now) if source is not None else False
        timers.fire_due(now)
        wake_at = math.inf
        if source is not None:
            active |= source.replay(trio.current_time())
            if not active:
                source.watch(False)
                # A packet between the read and the unwatch woke nobody.
                if source.replay(trio.current_time()):
                    source.watch(True)
                    active = True
            if active:
                wake_at = min(wake_at, now + ACTIVITY_POLL)
        changed = timers.changed_event()
        deadline = timers.next_deadline()
        if deadline is not None:
            wake_at = min(wake_at, deadline)
        with trio.move_on_at(wake_at):
            await changed.wait()
