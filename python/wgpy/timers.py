"""The per-peer timers: the kernel's `timers.c` state machine, driven by explicit timestamps.

- retransmit_handshake: armed for REKEY_TIMEOUT + jitter when an initiation is sent; on expiry
  resend it as a retry, 19 times (20 sends in all), then give up: purge the staged packets and
  wipe the keys 540 s later.
- send_keepalive: armed for KEEPALIVE_TIMEOUT when data (not a keepalive) is received, unless
  pending (then one more is owed); any authenticated send deletes it.
- new_handshake: armed for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter when data is sent, unless
  pending; any authenticated receive deletes it; on expiry start a new handshake.
- zero_key_material: re-armed for 3 * REJECT_AFTER_TIME when a session is derived; on expiry
  erase the handshake and all keypairs.
- persistent_keepalive: re-armed for the peer's interval by every authenticated packet sent or
  received; on expiry send a keepalive, so it only fires on an idle tunnel.

How the device drives it. The data plane runs in Rust and never calls Python per packet, so the
device learns of packets from timestamps it reads from Rust and replays them into the hooks, in
timestamp order, possibly late. Every hook therefore takes the time `at` (Trio clock) at which
the event happened, and the object behaves as a discrete-event simulation of the kernel:

- An expiry happens at its deadline: re-arms inside an expiry handler count from the deadline, so
  a driver that wakes a little late changes nothing.
- A deadline at or before `at` has already passed when the event happened: every hook first fires
  the timers due by `at`, in deadline order (ties in arming order), then applies the event.
- The device must replay an event before firing any deadline later than the event (`run_timers`
  calls `before_fire` for this), and must call `data_received` only for non-empty packets: a
  received keepalive calls only `any_authenticated_packet_received` and `..._traversal`, so two
  idle peers do not answer each other's keepalives forever.
- Expiry handlers change state first and call the actions last. In the kernel the packet a
  handler sends is encrypted asynchronously, so its own hooks (which may delete the timer just
  re-armed) run after the handler; state-first gives that outcome whether the device reports the
  send from inside the action or later.

Initiations that are not retries (the device's own: no usable key, rekey on send) go through
`initiate_handshake`, which resets the attempt count as `wg_packet_send_queued_handshake_initiation`
does; the receive-side last-minute rekey goes through `rekey_on_receive`.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Callable
from typing import ClassVar, Protocol

import trio

from wgpy.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    NEW_HANDSHAKE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_TIME,
)

__all__ = ["PeerTimers", "Timer", "TimerActions", "run_timers"]

# The UAPI (and the kernel) store the interval as a u16 of seconds.
MAX_PERSISTENT_KEEPALIVE = 65535


class TimerActions(Protocol):
    """What the timers ask the peer to do. Actions must not block; they may call hooks."""

    def send_keepalive(self) -> None: ...

    def send_handshake_initiation(self, *, is_retry: bool) -> None:
        """Send an initiation unless one went out less than REKEY_TIMEOUT ago (the peer's rule)."""
        ...

    def clear_endpoint_source(self) -> None: ...

    def purge_staged_packets(self) -> None: ...

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
        self.sent_lastminute_handshake = False
        self.last_handshake: float | None = None
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
        self.sent_lastminute_handshake = False
        # On the Trio clock; the device converts it to wall time for the UAPI.
        self.last_handshake = at

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
        """Start a new handshake (not a retry): resets the attempt count, then sends."""
        self._advance(at)
        self._send_initiation(is_retry=False)

    def rekey_on_receive(self, at: float) -> bool:
        """The receive path found the current key needs a last-minute rekey (initiator, > 165 s).

        Sends a new initiation the first time only, until the next completed handshake
        (kernel receive.c keep_key_fresh). Returns whether it sent one.
        """
        self._advance(at)
        if self.sent_lastminute_handshake or self._stopped:
            return False
        self.sent_lastminute_handshake = True
        self._send_initiation(is_retry=False)
        return True

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
        """An event set the next time a timer is armed or deleted, or the peer is stopped."""
        if self._changed is None or self._changed.is_set():
            self._changed = trio.Event()
        return self._changed

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


class _TaskStatus(Protocol):
    """What `nursery.start` passes (`trio.TaskStatus` from Trio 0.23 on)."""

    def started(self, value: None = None) -> None: ...


async def run_timers(
    timers: PeerTimers,
    *,
    before_fire: Callable[[float], object] | None = None,
    task_status: _TaskStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fire `timers` on Trio's clock until the peer is stopped (or the task is cancelled).

    Sleeps until the next deadline, waking early whenever a timer is armed or deleted. Before
    firing it calls `before_fire(now)`, where the device replays the packet timestamps it has
    not replayed yet, so that no event is applied after a deadline it should have affected.
    """
    task_status.started()
    while not timers.stopped:
        changed = timers.changed_event()
        deadline = timers.next_deadline()
        with trio.move_on_at(math.inf if deadline is None else deadline):
            await changed.wait()
            continue
        now = trio.current_time()
        if before_fire is not None:
            before_fire(now)
        timers.fire_due(now)
