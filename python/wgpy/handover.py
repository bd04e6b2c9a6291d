"""Seamless handover: follow underlay changes and tell every peer at once.

The rules:

- A netlink socket watches link, address and route changes in the network
  namespace of the UDP sockets: the one the device was created in, even if
  its TUN interface was moved to another namespace since.
- The path to a peer is the kernel's route to its endpoint (output interface,
  gateway, preferred source address), asked with the sockets' fwmark, as a
  send with no chosen source would take it.
- After each burst of netlink news, every peer's path is compared with the
  one last seen. It moved if the output interface or gateway changed, or if
  the peer's sticky source address is no longer a local address. A new
  preferred source alone is no move: replies keep leaving from the address
  the peer contacted, as long as it exists (a NAT or firewall on the way
  tracks that address).
- A peer whose path moved is re-announced: the new path's source address
  becomes its sticky source, pinned (packets the peer still sends to the old
  address do not pull it back, see the data plane's endpoint.rs), its held
  packets are flushed, then an authenticated keepalive goes out (a new
  handshake as well if the session is older than 165 s, or instead if no
  keypair can send), so the peer's endpoint moves at once.
- A packet sent the old way in the moment before we noticed the change can
  leave the new link's neighbour (ARP/NDP) entry for its gateway unresolved,
  asked for with the old source address, which the access router ignores:
  resolution would then wait a second for its retry. So an unresolved entry
  is deleted before the re-announcement, whose own packet resolves it anew.
- The pin ends when a packet of the peer arrives at the new address: the
  re-announcement worked. If CONFIRM_AFTER later packets have arrived but
  none there (the keepalive was lost), the peer is re-announced again, at
  most CONFIRM_TRIES times per change.
- With no route to a peer, the data plane holds its packets (at most 128,
  the staging bound) instead of dropping them; they go, and the peer is
  re-announced, as soon as a route returns (netlink says when). A send that
  finds no path holds the peer too; if a route exists meanwhile, the peer is
  re-checked every second even without news.
- New endpoints (configured or roamed) are looked at in batches, 50 ms
  apart: configuring many peers costs a few rounds, not one per peer.
- A peer whose endpoint has other addresses (a name with A and AAAA
  records, candidates: wgpy.names) is not held when the route to its
  address goes: it is switched to an address the host can reach, and
  re-announced from there at once. A switch made elsewhere (a name resolved
  anew) is re-announced the same way. Netlink news also tells wgpy.names
  to resolve again (the network asked may have changed).
- Each decision is a DeviceEvent ("underlay_changed", "path_lost",
  "reannounced"), the most recent ones are kept for `wgpy show`, and each
  kind is counted since start (`counts`, for the metrics).
- On by default. Off with ``Device(handover=False)``, the daemon's
  ``--no-handover`` or WGPY_HANDOVER=0; then nothing here runs and the data
  plane drops what it cannot send, as before.

It talks to the device through a narrow interface: the data plane, the list
of live peers, the fwmark and the event fan-out; it imports no device code.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from wgpy._core import Datapath, PeerState, PublicKey
from wgpy.constants import REKEY_ON_RECEIVE_AGE
from wgpy.events import DeviceEvent, EventKind
from wgpy.netlink import Netlink, Path, describe, drain_news, open_monitor

log = logging.getLogger("wgpy")

ENV = "WGPY_HANDOVER"
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)
RECHECK_HELD = 1.0  # seconds between re-checks of peers held although a route exists
LEARN_DELAY = 0.05  # new endpoints are looked at in batches this far apart
RELEASE_AGAIN_AFTER = 1.0  # a peer the data plane holds again is not released sooner
CONFIRM_AFTER = 0.1  # seconds after a re-announcement to check that the peer follows
CONFIRM_TRIES = 5
RECENT_EVENTS = 16
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20

PeerIds = Callable[[], Iterable[tuple[int, PublicKey]]]
_KINDS: tuple[EventKind, ...] = ("underlay_changed", "path_lost", "reannounced")


class EndpointChoices(Protocol):
    """The other addresses of peers' endpoints (wgpy.names)."""

    def path_lost(self, peer_id: int, current: tuple[str, int] | None) -> bool:
        """Moves the peer to a reachable address if it has one; whether it did."""
        ...

    def underlay_changed(self) -> None: ...


def enabled_by_default() -> bool:
    """WGPY_HANDOVER=0/off/no/false turns handover off; anything else leaves it on."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


@dataclass
class _PeerPath:
    endpoint: str  # the endpoint's address when `path` was found
    path: Path | None
    held_since: float | None = None  # Trio time the route was last seen gone
    looked_at: float = 0.0  # Trio time this path was found
    released_at: float = -1e9
    confirm_at: float | None = None  # Trio time to check the last re-announcement
    announced: float = 0.0  # CLOCK_MONOTONIC time of the last re-announcement
    tries: int = 0  # re-announcements for the current change

    def follow(self, before: _PeerPath | None) -> None:
        """Keeps what `before` knew about holding and re-announcing."""
        if before is not None:
            self.held_since, self.released_at = before.held_since, before.released_at
            self.confirm_at, self.tries = before.confirm_at, before.tries
            self.announced = before.announced


@dataclass
class HandoverReport:
    """What `wgpy show` reports: the recent decisions and their times (Unix time)."""

    enabled: bool
    last_underlay_change: float | None
    events: list[DeviceEvent]
    last_reannounce: dict[PublicKey, float] = field(default_factory=dict)


@dataclass
class _Action:
    peer_id: int
    why: str
    again: bool = False  # a re-announcement for a change already announced


@dataclass
class _Look:
    """What one evaluation round learnt: routes, local addresses, decisions."""

    news: list[str] | None
    switched: set[int] = field(default_factory=set)  # peers moved to another address
    routes: dict[str, Path | None] = field(default_factory=dict)
    local: set[str] | None = None
    changes: list[str] = field(default_factory=list)
    actions: list[_Action] = field(default_factory=list)


class Handover:
    """The underlay watcher of one device; `run` is its task."""

    def __init__(
        self,
        name: str,
        datapath: Datapath,
        *,
        peers: PeerIds,
        fwmark: Callable[[], int],
        emit: Callable[[DeviceEvent], None],
        choices: EndpointChoices | None = None,
    ) -> None:
        self._name = name
        self._choices = choices
        self._switched: set[int] = set()
        self._dp = datapath
        self._peers = peers
        self._fwmark = fwmark
        self._emit = emit
        self._paths: dict[int, _PeerPath] = {}
        self._dirty: set[int] = set()
        self._learning: set[int] = set()
        self._learn_at: float | None = None
        self._everything = False
        self._news: list[str] | None = None
        self._wake = trio.Event()
        self._monitor: socket.socket | None = None
        self._netlink: Netlink | None = None
        self._keys: dict[int, PublicKey] = {}
        self.last_underlay_change: float | None = None
        self.last_reannounce: dict[PublicKey, float] = {}
        self.recent: deque[DeviceEvent] = deque(maxlen=RECENT_EVENTS)
        # Decisions since start, by kind (metrics: "handovers" = reannounced).
        self.counts: dict[str, int] = {f"handover_{kind}": 0 for kind in _KINDS}
        self.running = False

    # --- what the device tells us ------------------------------------------------------

    def endpoint_set(self, peer_id: int) -> None:
        """The peer's endpoint was configured or roamed: learn its path soon,
        together with the others set meanwhile (a `wg setconf` of 1,000 peers
        is a few rounds, not 1,000)."""
        self._learning.add(peer_id)
        if self._learn_at is None:
            self._learn_at = trio.current_time() + LEARN_DELAY
            self._wake.set()

    def switched(self, peer_id: int) -> None:
        """The peer's endpoint was moved to another of its addresses:
        re-announce from the path to it now."""
        self._switched.add(peer_id)
        self._wake.set()

    def unreachable(self, peer_id: int) -> None:
        """The data plane found no path to the peer and holds its packets."""
        self._dirty.add(peer_id)
        self._wake.set()

    def forget(self, peer_id: int, key: PublicKey) -> None:
        self._paths.pop(peer_id, None)
        self._dirty.discard(peer_id)
        self._learning.discard(peer_id)
        self._switched.discard(peer_id)
        self.last_reannounce.pop(key, None)

    def recheck_all(self) -> None:
        """Something that changes every path (the fwmark) changed."""
        self._everything = True
        self._wake.set()

    def report(self) -> HandoverReport:
        return HandoverReport(
            self.running, self.last_underlay_change, list(self.recent), dict(self.last_reannounce)
        )

    # --- the task ----------------------------------------------------------------------

    def open(self) -> None:
        """Opens the netlink sockets in the calling thread's namespace, which
        must be the UDP sockets' one (the device does it when it starts)."""
        monitor = open_monitor(GROUPS)
        try:
            self._netlink = Netlink()
        except BaseException:
            monitor.close()
            raise
        self._monitor = monitor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watches until cancelled (after `open`). A netlink failure is logged
        and stops handover: packets are no longer held."""
        monitor, netlink = self._monitor, self._netlink
        if monitor is None or netlink is None:
            raise RuntimeError("Handover.run before open")
        self._dp.set_hold_unreachable(True)
        self.running = True
        task_status.started()
        try:
            await self._evaluate(self._live(), news=None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_news, monitor)
                while True:
                    with trio.move_on_at(self._next_deadline()):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._evaluate_pending()
        except OSError as e:
            log.error("%s: handover stopped: %s", self._name, e)
        finally:
            self.running = False
            self._dp.set_hold_unreachable(False)
            monitor.close()
            netlink.close()
            self._monitor = self._netlink = None

    def _live(self) -> list[int]:
        """The live peers' ids (and their keys remembered for reports)."""
        self._keys = dict(self._peers())
        return list(self._keys)

    async def _read_news(self, monitor: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(monitor)
            news = drain_news(monitor)
            if news:
                self._news = (self._news or []) + news
                self._everything = True
                self._wake.set()
                if self._choices is not None:
                    self._choices.underlay_changed()

    def _next_deadline(self) -> float:
        """When to look again without news: a batch of new endpoints to
        learn; peers held although a route exists, RECHECK_HELD after their
        last look; re-announcements to confirm. (A peer with no route at all
        waits for netlink news of one.)"""
        times = (t for p in self._paths.values() if (t := _due_at(p)) is not None)
        first = min(times, default=float("inf"))
        return first if self._learn_at is None else min(first, self._learn_at)

    def _due(self, now: float) -> set[int]:
        due = {i for i, p in self._paths.items() if (t := _due_at(p)) is not None and t <= now}
        if self._learn_at is not None and self._learn_at <= now:
            due |= self._learning
            self._learning, self._learn_at = set(), None
        return due

    async def _evaluate_pending(self) -> None:
        live = set(self._live())
        news, self._news = self._news, None
        switched, self._switched = self._switched, set()
        if self._everything:
            self._everything = False
            self._dirty.clear()
            self._learning, self._learn_at = set(), None
            targets = sorted(live)
        else:
            ids, self._dirty = self._dirty | self._due(trio.current_time()) | switched, set()
            targets = sorted(ids & live)
        if targets:
            await self._evaluate(targets, news=news, switched=switched)

    # --- one round: learn each peer's path, decide, act -----------------------------------

    async def _evaluate(
        self, peer_ids: Iterable[int], *, news: list[str] | None, switched: set[int] | None = None
    ) -> None:
        """Finds each peer's path and acts on what changed. Without netlink
        `news` (the first look, a new endpoint, a due re-check) the paths are
        only learned: then just held peers, switched endpoints and due
        confirmations act."""
        look = _Look(news, switched=switched or set())
        for n, peer_id in enumerate(peer_ids):
            if n and n % 64 == 0:
                await trio.lowlevel.checkpoint()
            await self._look_at(peer_id, look)
        if look.changes:
            self._record_underlay_change(look)
        for action in look.actions:
            await self._act(action)

    async def _look_at(self, peer_id: int, look: _Look) -> None:
        state = self._state(peer_id)
        if state is None:
            return  # removed
        if state.endpoint is None:
            self._paths.pop(peer_id, None)
            return
        address = state.endpoint[0]
        if not await self._route(address, look):
            return  # no answer about the path: leave the peer be
        path = look.routes[address]
        if look.local is None:
            look.local = await self._require_netlink().local_addresses()
        if self._state(peer_id) is None:
            return  # removed while we waited
        before = self._paths.get(peer_id)
        if path is None and self._switch_away(peer_id, state.endpoint, before, look):
            return
        now = self._paths[peer_id] = _PeerPath(address, path, looked_at=trio.current_time())
        now.follow(before)
        if path is None:
            self._no_route(peer_id, state, before, now, look)
        else:
            self._route_exists(peer_id, state, before, now, look)

    async def _route(self, address: str, look: _Look) -> bool:
        """Finds the path to `address` into `look.routes` (once a round);
        False if netlink would not say."""
        if address not in look.routes:
            try:
                look.routes[address] = await self._require_netlink().route(address, self._fwmark())
            except OSError as e:
                log.debug("%s: no route answer for %s: %s", self._name, address, e)
                return False
        return True

    def _switch_away(
        self, peer_id: int, endpoint: tuple[str, int], before: _PeerPath | None, look: _Look
    ) -> bool:
        """No route to the peer's address: whether wgpy.names moved it to
        another (the switch brings it back here, through `switched`)."""
        if self._choices is None or not self._choices.path_lost(peer_id, endpoint):
            return False
        if before is not None and before.path is not None and before.endpoint == endpoint[0]:
            look.changes.append(f"{endpoint[0]}: {describe(before.path)} -> no route")
        return True

    def _no_route(
        self,
        peer_id: int,
        state: PeerState,
        before: _PeerPath | None,
        now: _PeerPath,
        look: _Look,
    ) -> None:
        assert look.local is not None
        source = state.endpoint_source
        if source is not None and source not in look.local:
            self._dp.clear_endpoint_source(peer_id)
        newly_held = self._dp.hold(peer_id)
        if now.held_since is None:
            now.held_since = trio.current_time()
        had_route = before is not None and before.path is not None
        if newly_held or had_route:
            if had_route:
                assert before is not None
                look.changes.append(f"{now.endpoint}: {describe(before.path)} -> no route")
            look.actions.append(_Action(peer_id, f"no route to {now.endpoint}: holding packets"))
        now.confirm_at = None

    def _route_exists(
        self,
        peer_id: int,
        state: PeerState,
        before: _PeerPath | None,
        now: _PeerPath,
        look: _Look,
    ) -> None:
        assert look.local is not None and now.path is not None
        source = state.endpoint_source
        same = before is not None and before.endpoint == now.endpoint
        old_path = before.path if before is not None else None
        changed = same and old_path != now.path  # reported: an underlay change
        moved = changed and _moved(old_path, now.path)  # acted on: a re-announcement
        gone = source is not None and source not in look.local
        held = state.held
        at = trio.current_time()
        if held and now.held_since is None:
            now.held_since = at  # held by the data plane: re-checked until released
        if changed:
            look.changes.append(f"{now.endpoint}: {describe(old_path)} -> {describe(now.path)}")
        again = self._unconfirmed(now, state, at)
        switched = peer_id in look.switched
        if look.news is None and not held and not again and not switched:
            return  # the first look only learns the paths
        recent = at - now.released_at < RELEASE_AGAIN_AFTER
        if held and not (moved or gone or switched) and recent:
            return  # sends fail although a route exists: retry on the next re-check
        if moved or gone or held or again or switched:
            why = (
                "endpoint switched"
                if switched
                else "path changed"
                if moved
                else f"source {source} gone"
                if gone
                else "path back"
                if held
                else "peer still sends the old way"
            )
            look.actions.append(
                _Action(peer_id, f"{why}: {describe(now.path)}", again=again and not moved)
            )

    def _unconfirmed(self, now: _PeerPath, state: PeerState, at: float) -> bool:
        """Whether the last re-announcement is due for its check and failed:
        packets came, but none to the new address (the pin still holds)."""
        if now.confirm_at is None or at < now.confirm_at:
            return False
        now.confirm_at = None
        answered = state.last_rx_auth > now.announced
        return state.source_pinned and answered and now.tries < CONFIRM_TRIES

    def _record_underlay_change(self, look: _Look) -> None:
        self.last_underlay_change = time.time()
        detail = "; ".join(look.changes)
        if look.news:
            detail += f" (netlink: {', '.join(sorted(set(look.news)))})"
        log.info("%s: underlay changed: %s", self._name, detail)
        self._record("underlay_changed", None, detail)

    async def _act(self, action: _Action) -> None:
        current = self._paths.get(action.peer_id)
        if current is None or self._state(action.peer_id) is None:
            return
        if current.path is None:
            log.info("%s: %s: %s", self._name, self._label(action.peer_id), action.why)
            self._record("path_lost", action.peer_id, action.why)
        else:
            await self._reannounce(action.peer_id, action.why, again=action.again)

    # --- re-announcing -----------------------------------------------------------------

    async def _unblock_neighbour(self, endpoint: str, path: Path) -> None:
        """Deletes the path's neighbour entry if it is unresolved (see above)."""
        netlink = self._netlink
        if netlink is None:
            return
        neighbour = path.gateway or endpoint
        try:  # best effort: without it, resolution just takes its second
            state = await netlink.neighbour_state(neighbour, path.oif)
            if state is not None and state & (NUD_INCOMPLETE | NUD_FAILED):
                log.debug("%s: neighbour %s unresolved, asking anew", self._name, neighbour)
                await netlink.delete_neighbour(neighbour, path.oif)
        except OSError as e:
            log.debug("%s: neighbour %s: %s", self._name, neighbour, e)

    async def _reannounce(self, peer_id: int, why: str, *, again: bool = False) -> None:
        """Forget the stale source, flush what is held, then a keepalive (or a
        handshake) from the new path; check CONFIRM_AFTER later that it worked.
        `again`: the last one for this change did not."""
        dp = self._dp
        state = self._paths[peer_id]
        now = trio.current_time()
        state.tries = state.tries + 1 if again else 1
        state.confirm_at = now + CONFIRM_AFTER
        state.announced = time.monotonic()
        path = state.path
        if (
            path is None
            or path.source is None
            or not dp.pin_source(peer_id, (path.source, path.oif))
        ):
            dp.clear_endpoint_source(peer_id)
        if path is not None:  # after the pin: nothing leaves the old way any more
            await self._unblock_neighbour(state.endpoint, path)
            if self._state(peer_id) is None:
                return
        flushed = dp.peer_state(peer_id).staged
        dp.release(peer_id)
        state.released_at = now
        state.held_since = None
        how = self._announce(peer_id, flushed)
        self.last_reannounce[self._keys[peer_id]] = time.time()
        detail = f"{how}; {why}"
        log.info("%s: re-announced to %s: %s", self._name, self._label(peer_id), detail)
        self._record("reannounced", peer_id, detail)

    def _announce(self, peer_id: int, flushed: int) -> str:
        """The authenticated packet that moves the peer's endpoint: the held
        packets (release sent them) or a keepalive, and a handshake if the
        session is about to need one anyway. With no session, a handshake."""
        dp = self._dp
        state = dp.peer_state(peer_id)
        if not state.can_send:
            dp.request_handshake(peer_id)
            return "handshake"
        how = f"{flushed} held packets" if flushed else "keepalive"
        if not flushed:
            dp.send_keepalive(peer_id)
        if time.monotonic() - state.handshake_complete > REKEY_ON_RECEIVE_AGE:
            dp.request_handshake(peer_id)
            how += " and handshake"
        return how

    # --- helpers -----------------------------------------------------------------------

    def _state(self, peer_id: int) -> PeerState | None:
        """The peer's state, or None if it is gone."""
        if peer_id not in self._keys:
            return None
        try:
            return self._dp.peer_state(peer_id)
        except LookupError:
            return None

    def _label(self, peer_id: int) -> str:
        key = self._keys.get(peer_id)
        return f"Peer({key.to_base64()})" if key is not None else f"peer {peer_id}"

    def _require_netlink(self) -> Netlink:
        if self._netlink is None:
            raise OSError("handover is not running")
        return self._netlink

    def _record(self, kind: EventKind, peer_id: int | None, detail: str) -> None:
        key: PublicKey | None = None
        endpoint: tuple[str, int] | None = None
        if peer_id is not None:
            key = self._keys.get(peer_id)
            state = self._state(peer_id)
            endpoint = state.endpoint if state is not None else None
        event = DeviceEvent(kind, time.time(), key, endpoint, detail)
        self.counts[f"handover_{kind}"] += 1
        self.recent.append(event)
        self._emit(event)


def _due_at(p: _PeerPath) -> float | None:
    """When a peer's path must be looked at again without news, if ever."""
    times = [p.confirm_at] if p.confirm_at is not None else []
    if p.held_since is not None and p.path is not None:
        times.append(p.looked_at + RECHECK_HELD)
    return min(times, default=None)


def _moved(before: Path | None, after: Path) -> bool:
    """A path moved if packets now leave another way: another interface or
    gateway. A new preferred source alone does not move it (rules above)."""
    return before is None or (before.oif, before.gateway) != (after.oif, after.gateway)
