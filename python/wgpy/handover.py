"""Seamless handover: follow underlay changes and tell every peer at once.

The rules (issue 7):

- A netlink socket watches link, address and route changes in the network
  namespace of the UDP sockets: the one the device was created in, even if
  its TUN interface was moved to another namespace since.
- The path to a peer is the kernel's route to its endpoint (output interface,
  gateway, preferred source address), asked with the sockets' fwmark, as a
  send with no chosen source would take it.
- After each burst of netlink news, every peer's path is compared with the
  one last seen. If it changed, or the peer's sticky source address is no
  longer a local address, the peer is re-announced: the new path's source
  address becomes its sticky source, pinned (packets the peer still sends to
  the old address do not pull it back, see the data plane's pin.rs), its
  held packets are flushed, then an authenticated keepalive goes out (a new
  handshake as well if the keypair is older than 165 s, or instead if no
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
  re-announced, as soon as a route returns. A send that finds no path holds
  the peer too. Held peers are re-checked every second even without news.
- Each decision is a DeviceEvent ("underlay_changed", "path_lost",
  "reannounced"), and the most recent ones are kept for `wgpy show`.
- On by default. Off with ``Device(handover=False)``, the daemon's
  ``--no-handover`` or WGPY_HANDOVER=0; then nothing here runs and the data
  plane drops what it cannot send, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELNEIGH,
    RTM_GETADDR,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from wgpy.constants import REKEY_ON_RECEIVE_AGE

if TYPE_CHECKING:
    from wgpy._core import PublicKey
    from wgpy.device import Device, DeviceEvent, EventKind
    from wgpy.peer import Peer

log = logging.getLogger("wgpy")

ENV = "WGPY_HANDOVER"
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)
RECHECK_HELD = 1.0  # seconds between re-checks of held peers without netlink news
RELEASE_AGAIN_AFTER = 1.0  # a peer the data plane holds again is not released sooner
CONFIRM_AFTER = 0.1  # seconds after a re-announcement to check that the peer follows
CONFIRM_TRIES = 5
RECENT_EVENTS = 16
NETLINK_BUFFER = 1 << 20
_NLMSG_HEADER = struct.Struct("=IHHII")
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
_NEWS = {
    16: "link",
    17: "link gone",
    20: "address",
    21: "address gone",
    24: "route",
    25: "route gone",
}


def enabled_by_default() -> bool:
    """WGPY_HANDOVER=0/off/no/false turns handover off; anything else leaves it on."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


@dataclass(frozen=True)
class Path:
    """Where the kernel sends packets for an endpoint."""

    oif: int
    gateway: str | None
    source: str | None

    def describe(self) -> str:
        try:
            dev = socket.if_indextoname(self.oif)
        except OSError:
            dev = f"#{self.oif}"
        via = f" via {self.gateway}" if self.gateway else ""
        return f"dev {dev}{via} src {self.source or '?'}"


def _describe(path: Path | None) -> str:
    return path.describe() if path is not None else "no route"


class Netlink:
    """Route and address queries over one rtnetlink socket, awaited on Trio.

    pyroute2 encodes and parses the messages; the socket is non-blocking and
    read when Trio says it is readable, so a query never blocks the loop.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setblocking(False)
        self._sock.bind((0, 0))
        self._marshal = MarshalRtnl()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    async def _request(self, msg: Any, kind: int, flags: int) -> list[Any]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self._sock.send(msg.data)
        replies: list[Any] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            for reply in self._marshal.parse(data):
                if reply["header"]["sequence_number"] != seq:
                    continue  # the answer to an earlier, abandoned query
                kind_ = reply["header"]["type"]
                if kind_ == NLMSG_ERROR or reply["header"].get("error") is not None:
                    error = reply["header"].get("error")
                    code = getattr(error, "code", 0)
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies  # an ACK
                if kind_ == NLMSG_DONE:
                    return replies
                replies.append(reply)
                if not flags & NLM_F_DUMP:
                    return replies

    async def route(self, address: str, mark: int = 0) -> Path | None:
        """The route a send to `address` takes now, or None if there is none."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = 128 if family == socket.AF_INET6 else 32
        attrs: list[tuple[str, object]] = [("RTA_DST", address)]
        if mark:
            attrs.append(("RTA_MARK", mark))
        msg["attrs"] = attrs
        try:
            replies = await self._request(msg, RTM_GETROUTE, NLM_F_REQUEST)
        except OSError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
                return None
            raise
        if not replies:
            return None
        r = replies[0]
        oif = r.get_attr("RTA_OIF")
        if oif is None:
            return None
        return Path(int(oif), r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_PREFSRC"))

    def _neighbour(self, address: str, oif: int) -> Any:
        msg = ndmsg()
        msg["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
        msg["ifindex"] = oif
        msg["attrs"] = [("NDA_DST", address)]
        return msg

    async def neighbour_state(self, address: str, oif: int) -> int | None:
        """The NUD state of `address`'s neighbour entry on `oif`; None if there is none."""
        try:
            replies = await self._request(
                self._neighbour(address, oif), RTM_GETNEIGH, NLM_F_REQUEST
            )
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):
                return None
            raise
        return int(replies[0]["state"]) if replies else None

    async def delete_neighbour(self, address: str, oif: int) -> None:
        try:
            await self._request(
                self._neighbour(address, oif), RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK
            )
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL):
                raise

    async def local_addresses(self) -> set[str]:
        """Every address configured in this namespace."""
        replies = await self._request(ifaddrmsg(), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP)
        out: set[str] = set()
        for r in replies:
            for name in ("IFA_LOCAL", "IFA_ADDRESS"):
                value = r.get_attr(name)
                if value:
                    out.add(str(value).partition("%")[0])
        return out


def open_monitor() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link, address and route news."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_BUFFER)
        sock.bind((0, GROUPS))
    except BaseException:
        sock.close()
        raise
    return sock


def drain_news(sock: socket.socket) -> list[str]:
    """Reads every pending notification; returns what they were about.
    An overflow (ENOBUFS: news were lost) reads as "overflow"."""
    news: list[str] = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return news
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                news.append("overflow")
                continue
            raise
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                break
            news.append(_NEWS.get(kind, f"type {kind}"))
            offset += (length + 3) & ~3


@dataclass
class _PeerPath:
    endpoint: str  # the endpoint's address when `path` was found
    path: Path | None
    held_since: float | None = None  # Trio time the route was last seen gone
    released_at: float = -1e9
    confirm_at: float | None = None  # Trio time to check the last re-announcement
    announced: float = 0.0  # CLOCK_MONOTONIC time of the last re-announcement
    tries: int = 0  # re-announcements for the current change


@dataclass
class HandoverReport:
    """What `wgpy show` reports: the recent decisions and their times (Unix time)."""

    enabled: bool
    last_underlay_change: float | None
    events: list[DeviceEvent]
    last_reannounce: dict[PublicKey, float] = field(default_factory=dict)


class Handover:
    """The underlay watcher of one device; `run` is its task."""

    def __init__(self, device: Device, emit: Callable[[DeviceEvent], None]) -> None:
        self._device = device
        self._emit = emit
        self._paths: dict[int, _PeerPath] = {}
        self._dirty: set[int] = set()
        self._everything = False
        self._news: list[str] | None = None
        self._wake = trio.Event()
        self._monitor: socket.socket | None = None
        self._netlink: Netlink | None = None
        self.last_underlay_change: float | None = None
        self.last_reannounce: dict[PublicKey, float] = {}
        self.recent: deque[DeviceEvent] = deque(maxlen=RECENT_EVENTS)
        self.running = False

    # --- what the device tells us ------------------------------------------

    def endpoint_set(self, peer: Peer) -> None:
        """The peer's endpoint was configured or roamed: find its path soon."""
        self._dirty.add(peer.id)
        self._wake.set()

    def unreachable(self, peer: Peer) -> None:
        """The data plane found no path to the peer and holds its packets."""
        self._dirty.add(peer.id)
        self._wake.set()

    def forget(self, peer: Peer) -> None:
        self._paths.pop(peer.id, None)
        self._dirty.discard(peer.id)
        self.last_reannounce.pop(peer.public_key, None)

    def recheck_all(self) -> None:
        """Something that changes every path (the fwmark) changed."""
        self._everything = True
        self._wake.set()

    def report(self) -> HandoverReport:
        return HandoverReport(
            self.running, self.last_underlay_change, list(self.recent), dict(self.last_reannounce)
        )

    # --- the task ---------------------------------------------------------

    def open(self) -> None:
        """Opens the netlink sockets in the calling thread's namespace, which
        must be the UDP sockets' one (the device does it when it starts)."""
        monitor = open_monitor()
        try:
            self._netlink = Netlink()
        except BaseException:
            monitor.close()
            raise
        self._monitor = monitor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watches until cancelled (after `open`). A netlink failure is logged
        and stops handover: packets are no longer held."""
        dp = self._device.datapath
        monitor, netlink = self._monitor, self._netlink
        if monitor is None or netlink is None:
            raise RuntimeError("Handover.run before open")
        dp.set_hold_unreachable(True)
        self.running = True
        task_status.started()
        try:
            await self._evaluate(list(self._device.peers), news=None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_news, monitor)
                while True:
                    with trio.move_on_at(self._next_deadline()):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._evaluate_pending()
        except OSError as e:
            log.error("%s: handover stopped: %s", self._device.name, e)
        finally:
            self.running = False
            dp.set_hold_unreachable(False)
            monitor.close()
            netlink.close()
            self._monitor = self._netlink = None

    async def _read_news(self, monitor: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(monitor)
            news = drain_news(monitor)
            if news:
                self._news = (self._news or []) + news
                self._everything = True
                self._wake.set()

    def _next_deadline(self) -> float:
        """When to look again without news: held peers every RECHECK_HELD,
        re-announcements to confirm."""
        times = [p.confirm_at for p in self._paths.values() if p.confirm_at is not None]
        if any(p.held_since is not None for p in self._paths.values()):
            times.append(trio.current_time() + RECHECK_HELD)
        return min(times, default=float("inf"))

    def _due(self, now: float) -> set[int]:
        return {
            i
            for i, p in self._paths.items()
            if p.held_since is not None or (p.confirm_at is not None and p.confirm_at <= now)
        }

    async def _evaluate_pending(self) -> None:
        peers = {p.id: p for p in self._device.peers}
        news, self._news = self._news, None
        if self._everything:
            self._everything = False
            self._dirty.clear()
            targets = list(peers.values())
        else:
            ids, self._dirty = self._dirty | self._due(trio.current_time()), set()
            targets = [peers[i] for i in ids if i in peers]
        if targets:
            await self._evaluate(targets, news=news)

    async def _evaluate(self, peers: Iterable[Peer], *, news: list[str] | None) -> None:
        """Finds each peer's path and acts on what changed. Without netlink
        `news` (the first look, a new endpoint, a due re-check) the paths are
        only learned: then just held peers and due confirmations act."""
        netlink = self._netlink
        assert netlink is not None
        dp = self._device.datapath
        mark = self._device.fwmark
        routes: dict[str, Path | None] = {}
        local: set[str] | None = None
        changes: list[str] = []
        actions: list[tuple[Peer, str, bool]] = []
        for n, peer in enumerate(peers):
            if n and n % 64 == 0:
                await trio.lowlevel.checkpoint()
            if peer.cancel_scope.cancel_called:
                continue  # removed
            endpoint = dp.endpoint(peer.id)
            if endpoint is None:
                self._paths.pop(peer.id, None)
                continue
            address = str(endpoint[0])
            if address not in routes:
                try:
                    routes[address] = await netlink.route(address, mark)
                except OSError as e:  # not a question of the path: leave the peer be
                    log.debug("%s: no route answer for %s: %s", self._device.name, address, e)
                    continue
            path = routes[address]
            if local is None:
                local = await netlink.local_addresses()
            if peer.cancel_scope.cancel_called:
                continue  # removed while we waited
            before = self._paths.get(peer.id)
            state = _PeerPath(address, path)
            if before is not None:
                state.held_since, state.released_at = before.held_since, before.released_at
                state.confirm_at, state.tries = before.confirm_at, before.tries
                state.announced = before.announced
            self._paths[peer.id] = state
            source = dp.endpoint_source(peer.id)
            now = trio.current_time()
            if path is None:
                if source is not None and source not in local:
                    dp.clear_endpoint_source(peer.id)
                newly_held = dp.hold(peer.id)
                if state.held_since is None:
                    state.held_since = now
                if newly_held or (before is not None and before.path is not None):
                    if before is not None and before.path is not None:
                        changes.append(f"{address}: {_describe(before.path)} -> no route")
                    actions.append((peer, f"no route to {address}: holding packets", False))
                state.confirm_at = None
                continue
            moved = before is not None and before.endpoint == address and before.path != path
            gone = source is not None and source not in local
            held = dp.is_held(peer.id)
            if held and state.held_since is None:
                state.held_since = now  # held by the data plane: re-checked until released
            if moved:
                assert before is not None
                changes.append(f"{address}: {_describe(before.path)} -> {_describe(path)}")
            again = False
            if state.confirm_at is not None and now >= state.confirm_at:
                state.confirm_at = None
                # Packets came, but none to the new address yet.
                answered = dp.activity(peer.id)[3] > state.announced
                again = dp.source_pinned(peer.id) and answered and state.tries < CONFIRM_TRIES
            if news is None and not held and not again:
                continue  # the first look only learns the paths
            if held and not moved and not gone and now - state.released_at < RELEASE_AGAIN_AFTER:
                continue  # sends fail although a route exists: retry on the next re-check
            if moved or gone or held or again:
                why = (
                    "path changed"
                    if moved
                    else f"source {source} gone"
                    if gone
                    else "path back"
                    if held
                    else "peer still sends the old way"
                )
                actions.append((peer, f"{why}: {_describe(path)}", again and not moved))
        if changes:
            self.last_underlay_change = time.time()
            detail = "; ".join(changes)
            if news:
                detail += f" (netlink: {', '.join(sorted(set(news)))})"
            log.info("%s: underlay changed: %s", self._device.name, detail)
            self._record("underlay_changed", None, detail)
        for peer, why, again in actions:
            current = self._paths.get(peer.id)
            if current is None or peer.cancel_scope.cancel_called:
                continue
            if current.path is None:
                log.info("%s: %s: %s", self._device.name, peer, why)
                self._record("path_lost", peer, why)
            else:
                await self._reannounce(peer, why, again=again)

    async def _unblock_neighbour(self, endpoint: str, path: Path) -> None:
        """Deletes the path's neighbour entry if it is unresolved (see above)."""
        netlink = self._netlink
        if netlink is None:
            return
        neighbour = path.gateway or endpoint
        try:  # best effort: without it, resolution just takes its second
            state = await netlink.neighbour_state(neighbour, path.oif)
            if state is not None and state & (NUD_INCOMPLETE | NUD_FAILED):
                log.debug("%s: neighbour %s unresolved, asking anew", self._device.name, neighbour)
                await netlink.delete_neighbour(neighbour, path.oif)
        except OSError as e:
            log.debug("%s: neighbour %s: %s", self._device.name, neighbour, e)

    async def _reannounce(self, peer: Peer, why: str, *, again: bool = False) -> None:
        """Forget the stale source, flush what is held, then a keepalive (or a
        handshake) from the new path; check CONFIRM_AFTER later that it worked.
        `again`: the last one for this change did not."""
        dp = self._device.datapath
        state = self._paths[peer.id]
        now = trio.current_time()
        state.tries = state.tries + 1 if again else 1
        state.confirm_at = now + CONFIRM_AFTER
        state.announced = time.monotonic()
        path = state.path
        if (
            path is None
            or path.source is None
            or not dp.pin_source(peer.id, (path.source, path.oif))
        ):
            dp.clear_endpoint_source(peer.id)
        if path is not None:  # after the pin: nothing leaves the old way any more
            await self._unblock_neighbour(state.endpoint, path)
            if peer.cancel_scope.cancel_called:
                return
        was_held, flushed = dp.release(peer.id)
        state.released_at = now
        held_since, state.held_since = state.held_since, None
        if dp.has_sending_keypair(peer.id):
            how = f"{flushed} held packets" if flushed else "keepalive"
            if not flushed:
                dp.send_keepalive(peer.id)
            last = peer.timers.last_handshake
            if last is not None and now - last > REKEY_ON_RECEIVE_AGE:
                peer.timers.initiate_handshake(now)
                how += " and handshake"
        else:
            # An initiation sent while no route existed never left this host.
            if was_held and held_since is not None and peer.last_sent_handshake is not None:
                if peer.last_sent_handshake >= held_since:
                    peer.last_sent_handshake = None
            peer.timers.initiate_handshake(now)
            how = "handshake"
        peer.poke()
        at = time.time()
        self.last_reannounce[peer.public_key] = at
        detail = f"{how}; {why}"
        log.info("%s: re-announced to %s: %s", self._device.name, peer, detail)
        self._record("reannounced", peer, detail)

    def _record(self, kind: EventKind, peer: Peer | None, detail: str) -> None:
        from wgpy.device import DeviceEvent

        key: PublicKey | None = None
        endpoint: tuple[str, int] | None = None
        if peer is not None:
            key = peer.public_key
            endpoint = self._device.datapath.endpoint(peer.id)
        event = DeviceEvent(kind, time.time(), key, endpoint, detail)
        self.recent.append(event)
        self._emit(event)
