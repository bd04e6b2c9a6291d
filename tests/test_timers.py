"""The per-peer timer state machine (kernel timers.c) and its Trio driver, on mock clocks."""

import functools
import heapq
import itertools
import random
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from wgpy import _core, constants
from wgpy.constants import REKEY_TIMEOUT
from wgpy.timers import PeerTimers, Timer, run_timers

MAX_JITTER = 1 / 3
INITIATIONS = ("initiation", "retry")


class FixedRng(random.Random):
    """Jitter at a fixed fraction of its range, so expected times can be written down."""

    def __init__(self, fraction: float = 0.0) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a, b):
        return a + (b - a) * self.fraction


class Device:
    """A fake peer: logs what the timers ask for and feeds back the hooks the kernel's send and
    receive paths would call (send.c/receive.c order). It applies the send-side rule of at most
    one initiation per REKEY_TIMEOUT itself, as the real peer does.

    With `defer` set, the feedback is handed to it instead of applied at once, as a device
    that learns of its own sends from the data plane's timestamps later would.
    """

    def __init__(self, *, rng=None, persistent_keepalive=0, has_key=True):
        self.log = []
        self.has_key = has_key  # without a key a keepalive is staged, not sent
        self.defer = None
        self.on_action = None
        self.remote = None  # another Device receiving what this one sends
        self.last_sent_handshake = None
        self.timers = PeerTimers(
            self, persistent_keepalive=persistent_keepalive, rng=rng or FixedRng()
        )

    def record(self, name):
        self.log.append((self.timers.now, name))
        if self.on_action is not None:
            self.on_action(self.timers.now)

    def react(self, at, feedback):
        if self.defer is None:
            feedback()
        else:
            self.defer(at, feedback)

    def names(self):
        return [name for _, name in self.log]

    def times(self, *names):
        return [at for at, name in self.log if name in names]

    # TimerActions

    def send_keepalive(self):
        at = self.timers.now
        self.record("keepalive")
        if self.has_key:
            self.react(at, lambda: self.sent_packet(at, data=False))

    def send_handshake_initiation(self, *, is_retry):
        at = self.timers.now
        if self.last_sent_handshake is not None and at - self.last_sent_handshake < REKEY_TIMEOUT:
            self.record("initiation rate-limited")
            return
        self.last_sent_handshake = at
        self.record("retry" if is_retry else "initiation")
        self.react(at, lambda: self.sent_initiation(at))

    def clear_endpoint_source(self):
        self.record("clear_src")

    def purge_staged_packets(self):
        self.record("purge")

    def handshake_failed(self):
        self.record("failed")

    def zero_key_material(self):
        self.record("zero")

    # packet paths

    def sent_packet(self, at, *, data):
        self.timers.any_authenticated_packet_traversal(at)
        self.timers.any_authenticated_packet_sent(at)
        if data:
            self.timers.data_sent(at)
        if self.remote is not None:
            self.remote.received_packet(at, data=data)

    def received_packet(self, at, *, data):
        self.timers.any_authenticated_packet_received(at)
        self.timers.any_authenticated_packet_traversal(at)
        # receive.c: a zero-length (keepalive) packet stops here.
        if data:
            self.timers.data_received(at)

    def sent_initiation(self, at):
        self.timers.any_authenticated_packet_traversal(at)
        self.timers.any_authenticated_packet_sent(at)
        self.timers.handshake_initiated(at)

    def received_response(self, at):
        self.timers.session_derived(at)
        self.timers.handshake_complete(at)
        self.timers.any_authenticated_packet_received(at)
        self.timers.any_authenticated_packet_traversal(at)
        # The initiator confirms the new key at once.
        self.sent_packet(at, data=False)

    def received_initiation(self, at):
        # The response is derived and sent before the initiation counts as received.
        self.timers.session_derived(at)
        self.sent_packet(at, data=False)
        self.timers.any_authenticated_packet_received(at)
        self.timers.any_authenticated_packet_traversal(at)

    def confirmed_by_data(self, at):
        # The responder's first data packet under the new keypair completes the handshake.
        self.timers.handshake_complete(at)
        self.received_packet(at, data=True)


def run_until(end, *devices):
    """Fire every deadline up to `end`, across devices, in time order."""
    while True:
        due = [
            (device.timers.next_deadline(), i)
            for i, device in enumerate(devices)
            if device.timers.next_deadline() is not None
        ]
        if not due or min(due)[0] > end:
            break
        deadline, i = min(due)
        devices[i].timers.fire_due(deadline)
    for device in devices:
        device.timers.fire_due(end)


def play(device, events, end):
    """Apply (time, callable) events at their times, firing the deadlines in between."""
    for at, event in sorted(events, key=lambda item: item[0]):
        run_until(at, device)
        event(at)
    run_until(end, device)


def approx(values):
    return pytest.approx(values, abs=1e-9)


# ---- constants ------------------------------------------------------------------------------


def test_constants():
    assert constants.MAX_TIMER_HANDSHAKES == 18
    assert constants.NEW_HANDSHAKE_TIMEOUT == 15
    assert constants.REKEY_ON_RECEIVE_AGE == 165
    assert constants.ZERO_KEY_MATERIAL_TIME == 540
    assert constants.UNDER_LOAD_QUEUE_LENGTH == 512
    # One source of truth: the values the Rust core has are the Rust core's.
    for name in ("REKEY_AFTER_TIME", "REJECT_AFTER_TIME", "REKEY_ATTEMPT_TIME", "REKEY_TIMEOUT"):
        assert getattr(constants, name) is getattr(_core, name)
    assert constants.KEEPALIVE_TIMEOUT is _core.KEEPALIVE_TIMEOUT
    assert constants.COOKIE_SECRET_MAX_AGE is _core.COOKIE_SECRET_MAX_AGE
    assert (constants.REKEY_AFTER_TIME, constants.REJECT_AFTER_TIME) == (120, 180)
    assert (constants.REKEY_TIMEOUT, constants.KEEPALIVE_TIMEOUT) == (5, 10)


# ---- retransmit_handshake -------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_unanswered_handshake_is_sent_20_times_then_given_up(fraction):
    device = Device(rng=FixedRng(fraction))
    device.timers.initiate_handshake(0.0)
    run_until(2000, device)

    step = REKEY_TIMEOUT + MAX_JITTER * fraction
    sends = [k * step for k in range(20)]
    expected = [(0.0, "initiation")]
    for at in sends[1:]:
        expected += [(at, "clear_src"), (at, "retry")]
    give_up = 20 * step
    # The give-up is reported once, right after the purge.
    expected += [(give_up, "purge"), (give_up, "failed"), (give_up + 540, "zero")]
    assert device.names() == [name for _, name in expected]
    assert [at for at, _ in device.log] == approx([at for at, _ in expected])
    # 1 initiation + 19 retries over 95..101.3 s; the give-up comes one timeout later.
    assert device.names().count("retry") == 19
    assert 95 <= device.times(*INITIATIONS)[-1] <= 95 + 19 / 3
    assert 100 <= give_up <= 100 + 20 / 3
    assert device.timers.handshake_attempts == 19
    assert device.timers.next_deadline() is None


def test_give_up_deletes_send_keepalive_and_keeps_an_earlier_zeroing():
    device = Device()
    device.timers.session_derived(0.0)  # zero_key_material at 540
    play(
        device,
        [
            (10.0, device.timers.initiate_handshake),
            (107.0, lambda at: device.received_packet(at, data=True)),  # keepalive due at 117
        ],
        end=1000,
    )
    assert device.times("purge") == [110.0]  # 10 + 20 * 5
    assert device.times("keepalive") == []
    # Not postponed to 650: the wipe that was already pending stands.
    assert device.times("zero") == [540.0]


def test_handshake_complete_stops_retransmits():
    device = Device()
    play(
        device,
        [
            (0.0, device.timers.initiate_handshake),
            (12.0, device.received_response),
        ],
        end=400,
    )
    assert device.times(*INITIATIONS) == [0.0, 5.0, 10.0]
    assert device.timers.handshake_attempts == 0
    assert "purge" not in device.names()
    assert not device.timers.is_pending(Timer.RETRANSMIT_HANDSHAKE)


def test_a_new_initiation_resets_the_attempts():
    device = Device()
    device.timers.initiate_handshake(0.0)
    run_until(52.0, device)
    assert device.timers.handshake_attempts == 10
    # As in the kernel, a non-retry request resets the count even when the 5 s send limit
    # swallows it; the pending retransmit carries on from 55 s with 19 fresh retries.
    device.timers.initiate_handshake(52.0)
    assert device.timers.handshake_attempts == 0
    run_until(1000, device)
    assert device.names().count("initiation rate-limited") == 1
    assert device.times(*INITIATIONS) == approx([5.0 * k for k in range(30)])
    assert device.times("purge") == [150.0]


# ---- new_handshake --------------------------------------------------------------------------


def test_new_handshake_after_15_s_of_unanswered_data():
    device = Device(rng=FixedRng(0.5))
    # Data every second: sends while the timer is pending do not push it back.
    play(
        device, [(float(t), lambda at: device.sent_packet(at, data=True)) for t in range(15)], 15.5
    )
    deadline = 15 + MAX_JITTER / 2
    assert device.log == [(deadline, "clear_src"), (deadline, "initiation")]
    assert device.timers.handshake_attempts == 0


@pytest.mark.parametrize("reply", ["keepalive", "data", "response"])
def test_no_new_handshake_when_a_reply_came(reply):
    device = Device()
    receive = {
        "keepalive": lambda at: device.received_packet(at, data=False),
        "data": lambda at: device.received_packet(at, data=True),
        "response": device.received_response,
    }[reply]
    play(device, [(0.0, lambda at: device.sent_packet(at, data=True)), (14.0, receive)], 100)
    assert not any(name in INITIATIONS for name in device.names())


def test_data_sent_after_the_reply_arms_it_again():
    device = Device()
    play(
        device,
        [
            (0.0, lambda at: device.sent_packet(at, data=True)),
            (3.0, lambda at: device.received_packet(at, data=False)),
            (4.0, lambda at: device.sent_packet(at, data=True)),
        ],
        20,
    )
    assert device.log == [(19.0, "clear_src"), (19.0, "initiation")]


def test_sent_keepalives_do_not_arm_it():
    device = Device()
    play(device, [(float(t), lambda at: device.sent_packet(at, data=False)) for t in range(5)], 100)
    assert device.log == []


# ---- send_keepalive (passive) ---------------------------------------------------------------


def test_passive_keepalive_10_s_after_received_data():
    device = Device()
    play(device, [(0.0, lambda at: device.received_packet(at, data=True))], 100)
    assert device.log == [(10.0, "keepalive")]


def test_received_keepalives_do_not_arm_the_passive_keepalive():
    device = Device()
    play(
        device,
        [(t * 3.0, lambda at: device.received_packet(at, data=False)) for t in range(30)],
        200,
    )
    assert device.log == []
    assert not device.timers.is_pending(Timer.SEND_KEEPALIVE)


def test_any_authenticated_send_cancels_the_passive_keepalive():
    device = Device()
    play(
        device,
        [
            (0.0, lambda at: device.received_packet(at, data=True)),
            (5.0, lambda at: device.sent_packet(at, data=False)),
        ],
        100,
    )
    assert device.log == []


def test_more_data_while_pending_owes_one_more_keepalive():
    # The re-arm after the owed keepalive is deleted by that keepalive's own send, as in the
    # kernel (whose send is asynchronous, so its hooks run after the handler re-armed).
    device = Device()
    events = [(t, lambda at: device.received_packet(at, data=True)) for t in (0.0, 3.0)]
    play(device, events, 100)
    assert device.log == [(10.0, "keepalive")]
    assert not device.timers.need_another_keepalive
    # It matters when the keepalive cannot go out (no key yet): then a second one is tried.
    stuck = Device(has_key=False)
    play(stuck, [(t, lambda at: stuck.received_packet(at, data=True)) for t in (0.0, 3.0)], 100)
    assert stuck.log == [(10.0, "keepalive"), (20.0, "keepalive")]


def test_expiry_rearms_from_its_deadline_even_if_fired_late():
    device = Device(has_key=False)
    device.received_packet(0.0, data=True)
    device.received_packet(1.0, data=True)
    device.timers.fire_due(12.5)
    assert device.log == [(10.0, "keepalive")]
    assert device.timers.deadline(Timer.SEND_KEEPALIVE) == 20.0


def test_two_idle_peers_do_not_ping_pong_keepalives():
    a, b = Device(), Device()
    a.remote, b.remote = b, a
    a.sent_packet(0.0, data=True)
    run_until(1000, a, b)
    # B acknowledges the data once; A's new_handshake is cancelled by that keepalive.
    assert b.log == [(10.0, "keepalive")]
    assert a.log == []


# ---- persistent_keepalive -------------------------------------------------------------------


def test_persistent_keepalive_is_not_sent_while_traffic_flows():
    device = Device(persistent_keepalive=25)
    events = []
    for t in range(60):  # a request every second, answered 100 ms later
        events.append((float(t), lambda at: device.sent_packet(at, data=True)))
        events.append((t + 0.1, lambda at: device.received_packet(at, data=True)))
    play(device, events, 200)
    assert [at for at in device.times("keepalive") if at < 60] == []
    # Idle: the passive keepalive answers the last reply (59.1 + 10), then one every 25 s.
    assert set(device.names()) == {"keepalive"}
    assert device.times("keepalive") == approx([69.1, 94.1, 119.1, 144.1, 169.1, 194.1])


def test_persistent_keepalive_on_an_idle_tunnel():
    device = Device(persistent_keepalive=25)
    play(device, [(0.0, device.received_response)], 101)
    # The key-confirming keepalive at 0 is the device's own, not logged as an action.
    assert device.log == [(25.0 * k, "keepalive") for k in range(1, 5)]


def test_set_persistent_keepalive():
    device = Device()
    timers = device.timers
    timers.set_persistent_keepalive(0, 1.0)
    assert device.log == []
    # Turned on from 0: one keepalive at once (wireguard-go uapi.go, kernel netlink.c).
    timers.set_persistent_keepalive(25, 5.0)
    assert device.log == [(5.0, "keepalive")]
    assert timers.deadline(Timer.PERSISTENT_KEEPALIVE) == 30.0
    # A change between non-zero values sends nothing and leaves the pending timer alone.
    timers.set_persistent_keepalive(40, 6.0)
    assert device.log == [(5.0, "keepalive")]
    assert timers.deadline(Timer.PERSISTENT_KEEPALIVE) == 30.0
    run_until(31.0, device)
    assert device.times("keepalive") == [5.0, 30.0]
    assert timers.deadline(Timer.PERSISTENT_KEEPALIVE) == 70.0
    # Turned off: the pending timer expires without a keepalive, and nothing re-arms it.
    timers.set_persistent_keepalive(0, 40.0)
    device.received_packet(50.0, data=False)
    run_until(500, device)
    assert device.times("keepalive") == [5.0, 30.0]
    assert timers.next_deadline() is None
    for bad in (-1, 65536):
        with pytest.raises(ValueError):
            timers.set_persistent_keepalive(bad, 500.0)
    with pytest.raises(ValueError):
        PeerTimers(device, persistent_keepalive=-5)


# ---- zero_key_material ----------------------------------------------------------------------


def test_zero_key_material_540_s_after_the_last_session():
    device = Device()
    device.timers.session_derived(0.0)
    assert device.timers.deadline(Timer.ZERO_KEY_MATERIAL) == 540.0
    device.timers.session_derived(100.0)  # re-armed, not kept
    run_until(2000, device)
    assert device.log == [(640.0, "zero")]


# ---- initiations the data plane asks for ---------------------------------------------------


def test_a_data_plane_request_restarts_the_attempts():
    # The data plane asks for initiations itself (no key, rekey); each request that is not a
    # retry restarts the count, as wg_packet_send_queued_handshake_initiation does, so
    # traffic that keeps asking keeps the retries going.
    device = Device()
    device.timers.initiate_handshake(0.0)
    run_until(22.0, device)
    assert device.timers.handshake_attempts == 4
    device.timers.handshake_requested()
    assert device.timers.handshake_attempts == 0


# ---- stop -----------------------------------------------------------------------------------


def test_stop_deletes_everything_and_ignores_later_hooks():
    device = Device(persistent_keepalive=25)
    device.timers.session_derived(0.0)
    device.timers.any_authenticated_packet_traversal(0.0)
    device.timers.data_sent(1.0)
    device.timers.data_received(2.0)
    device.timers.handshake_initiated(3.0)
    assert len([t for t in Timer if device.timers.is_pending(t)]) == 5
    log = list(device.log)
    device.timers.stop()
    assert device.timers.stopped
    assert device.timers.next_deadline() is None
    device.sent_packet(4.0, data=True)
    device.received_response(5.0)
    device.timers.set_persistent_keepalive(0, 6.0)
    device.timers.set_persistent_keepalive(10, 7.0)
    device.timers.initiate_handshake(8.0)
    run_until(5000, device)
    assert device.log == log
    assert device.timers.next_deadline() is None


# ---- replaying late -------------------------------------------------------------------------


def test_a_hook_fires_the_deadlines_it_comes_after():
    device = Device()
    device.sent_packet(0.0, data=True)  # new_handshake due at 15
    # A reply replayed with a later timestamp: the deadline passed before it happened.
    device.received_packet(19.0, data=False)
    assert device.log == [(15.0, "clear_src"), (15.0, "initiation")]
    # One with an earlier timestamp cancels.
    other = Device()
    other.sent_packet(0.0, data=True)
    other.received_packet(14.0, data=False)
    run_until(100, other)
    assert other.log == []


@dataclass
class Event:
    at: float
    kind: str
    arg: int = 0


def apply(device, event):
    at, timers = event.at, device.timers
    match event.kind:
        case "send_data":
            device.sent_packet(at, data=True)
        case "send_keepalive":
            device.sent_packet(at, data=False)
        case "recv_data":
            device.received_packet(at, data=True)
        case "recv_keepalive":
            device.received_packet(at, data=False)
        case "initiate":
            timers.initiate_handshake(at)
        case "recv_response":
            device.received_response(at)
        case "recv_initiation":
            device.received_initiation(at)
        case "confirm":
            device.confirmed_by_data(at)
        case "set_keepalive":
            timers.set_persistent_keepalive(event.arg, at)
        case _:
            raise AssertionError(event.kind)


KINDS = {
    "send_data": 8,
    "recv_data": 6,
    "send_keepalive": 1,
    "recv_keepalive": 3,
    "initiate": 2,
    "recv_response": 1,
    "recv_initiation": 1,
    "confirm": 1,
    "set_keepalive": 1,
}
# The device may replay an event this late; less than the shortest timer an event can arm
# (a 3 s persistent keepalive here), which is what "before any deadline it affects" needs.
MAX_LATENESS = 2.0


def scenario(seed):
    rng = random.Random(seed)
    events, now = [], 0.0
    for _ in range(rng.randint(1, 80)):
        now += rng.expovariate(1 / rng.choice([0.3, 3.0, 20.0]))
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        events.append(Event(now, kind, rng.choice([0, 0, 3, 7, 25])))
    # Not a whole number of seconds after an event, where a keepalive chain could end exactly.
    end = now + rng.choice([5.0, 60.0, 700.0]) + rng.random()
    return events, end, rng.choice([0, 0, 3, 25])


def new_device(seed, keepalive):
    return Device(rng=random.Random(seed), persistent_keepalive=keepalive)


def run_live(seed):
    """Every event applied at its time, every deadline fired at its time."""
    events, end, keepalive = scenario(seed)
    device = new_device(seed, keepalive)
    for event in events:
        run_until(event.at, device)
        apply(device, event)
    run_until(end, device)
    return device.log


def run_late(seed):
    """Events, and the hooks of the device's own sends, replayed in batches, late, but each
    before any deadline later than it fires."""
    events, end, keepalive = scenario(seed)
    flush_rng = random.Random(~seed)
    device = new_device(seed, keepalive)
    queue, order = [], itertools.count()
    device.defer = lambda at, feedback: heapq.heappush(queue, (at, next(order), feedback))

    def replay():
        while queue:
            heapq.heappop(queue)[2]()

    i = 0
    while True:
        e = events[i].at if i < len(events) else end
        if queue and e - queue[0][0] > MAX_LATENESS:
            replay()
            continue
        deadline = device.timers.next_deadline()
        if deadline is not None and deadline <= e:
            replay()  # what the driver's before_fire does
            deadline = device.timers.next_deadline()
            if deadline is not None and deadline <= e:
                device.timers.fire_due(deadline)
            continue
        if i == len(events):
            if not queue:
                break
            replay()
            continue
        event = events[i]
        i += 1
        heapq.heappush(queue, (event.at, next(order), lambda event=event: apply(device, event)))
        if flush_rng.random() < 0.2:
            replay()
    return device.log


def run_without_driver(seed):
    """Only the hooks: nothing calls fire_due until the end, so every deadline is fired by the
    first hook whose time is past it."""
    events, end, keepalive = scenario(seed)
    device = new_device(seed, keepalive)
    for event in events:
        apply(device, event)
    device.timers.fire_due(end)
    return device.log


def run_on_trio(seed):
    """The Trio driver on a mock clock, with events applied by another task at their times.
    Every action must happen at the Trio time it is logged at: the driver must have woken for
    it, not a later hook."""
    events, end, keepalive = scenario(seed)
    device = new_device(seed, keepalive)

    def on_action(at):
        assert trio.current_time() == pytest.approx(at, abs=1e-9)

    device.on_action = on_action

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(run_timers, device.timers)
            for event in events:
                await trio.sleep_until(event.at)
                apply(device, event)
            await trio.sleep_until(end)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return device.log


def test_scenarios_are_varied():
    logs = [run_live(seed) for seed in range(300)]
    names = {name for log in logs for _, name in log}
    assert names == {
        "keepalive",
        "initiation",
        "retry",
        "initiation rate-limited",
        "clear_src",
        "purge",
        "failed",
        "zero",
    }
    assert sum(len(log) for log in logs) > 3000


@pytest.mark.parametrize("runner", [run_late, run_without_driver])
def test_replaying_late_gives_the_same_actions(runner):
    for seed in range(300):
        assert runner(seed) == run_live(seed), f"seed {seed}"


def test_trio_driver_gives_the_same_actions():
    for seed in range(40):
        assert run_on_trio(seed) == run_live(seed), f"seed {seed}"


# ---- Trio driver ----------------------------------------------------------------------------


def run_trio(main):
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_driver_wakes_for_a_new_earlier_deadline():
    device = Device(rng=FixedRng(0.5))
    fired = []
    device.on_action = lambda at: fired.append(trio.current_time())

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(run_timers, device.timers)
            await trio.sleep(1.0)
            device.timers.session_derived(1.0)  # the driver now sleeps until 541
            await trio.sleep(1.0)
            device.sent_packet(2.0, data=True)  # new_handshake at 17.17: must wake it
            await trio.sleep(100)
            nursery.cancel_scope.cancel()

    run_trio(main)
    deadline = 2 + 15 + MAX_JITTER / 2
    assert device.log[:2] == [(deadline, "clear_src"), (deadline, "initiation")]
    assert fired[:2] == approx([deadline, deadline])


def test_driver_replays_before_firing():
    device = Device()
    unreplayed = []  # events the data plane has recorded but the device has not replayed

    class Source:
        def replay(self, now):
            while unreplayed and unreplayed[0][0] <= now:
                at, event = unreplayed.pop(0)
                event(at)
            return False

        def watch(self, on):
            pass

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_timers, source=Source()), device.timers)
            device.sent_packet(0.0, data=True)  # new_handshake at 15
            unreplayed.append((14.0, lambda at: device.received_packet(at, data=False)))
            await trio.sleep(30)
            nursery.cancel_scope.cancel()

    run_trio(main)
    assert device.log == []


def test_driver_ends_when_the_peer_is_stopped():
    device = Device(persistent_keepalive=25)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(run_timers, device.timers)
            device.received_response(0.0)
            await trio.sleep(60)
            device.timers.stop()
        # The nursery closed by itself: the driver returned.
        assert trio.current_time() == 60

    run_trio(main)
    assert device.times("keepalive") == [25.0, 50.0]


def test_driver_is_cancellable_while_idle():
    device = Device()

    async def main():
        with trio.move_on_after(1000) as scope:
            await run_timers(device.timers)
        assert scope.cancelled_caught
        assert trio.current_time() == 1000

    run_trio(main)
    assert device.log == []
