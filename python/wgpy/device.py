"""A running WireGuard device: TUN + UDP sockets + the Rust data plane,
driven by Trio.

One nursery per device runs: the data plane's event loop (handshake
messages, "needs a handshake", key confirmation, roaming, timer activity)
and one timer task per peer. Everything here runs on the Trio thread; the
data plane's threads never call back into Python.

Handshake processing follows the kernel (receive.c, send.c):
- mac1 must be valid; when under load (a handshake backlog of at least
  MAX_QUEUED_INCOMING_HANDSHAKES / 8, and for 1 s after), a message without a
  valid mac2 gets a cookie reply, and one with a valid mac2 must pass the
  per-source rate limiter.
- An initiation from a known peer is answered; its keypair waits in "next"
  until the initiator uses it. A response completes our handshake: the
  keypair is current at once, staged packets (or a keepalive) follow.
- The endpoint follows every authenticated handshake message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import trio

from wgpy._core import (
    CookieChecker,
    Datapath,
    Handshake,
    PresharedKey,
    PrivateKey,
    ProtocolError,
    PublicKey,
    message_type,
    open_initiation,
    receiver_index,
)
from wgpy.constants import MAX_QUEUED_INCOMING_HANDSHAKES, UNDER_LOAD_AFTER_TIME
from wgpy.handover import Handover, HandoverReport, enabled_by_default
from wgpy.peer import IPNetwork, Peer, PeerStats
from wgpy.ratelimiter import Ratelimiter
from wgpy.tun import DEFAULT_MTU, Tun, open_udp_sockets, set_fwmark

if TYPE_CHECKING:
    from wgpy._core import DatapathEvent

log = logging.getLogger("wgpy")

Endpoint = tuple[str, int]
MTU_POLL_INTERVAL = 1.0
EventKind = Literal[
    "handshake_completed",
    "endpoint_changed",
    "tun_closed",
    # Handover (wgpy.handover): the path to some peer changed; no route to a
    # peer (its packets are held); a peer was told our new path.
    "underlay_changed",
    "path_lost",
    "reannounced",
]


@dataclass(frozen=True)
class DeviceEvent:
    """Something an embedding program may want to react to."""

    kind: EventKind
    time: float
    peer: PublicKey | None = None
    endpoint: Endpoint | None = None
    detail: str = ""


class DeviceError(Exception):
    """The device could not be set up or was used wrongly."""


def _network(value: str | IPNetwork) -> IPNetwork:
    return value if not isinstance(value, str) else ipaddress.ip_network(value, strict=False)


class Device:
    """A userspace WireGuard interface.

    Use as ``async with Device("wg0", private_key=key) as dev:``; configure
    peers with :meth:`add_peer`; wait for events with :meth:`subscribe`.
    """

    def __init__(
        self,
        name: str,
        *,
        private_key: PrivateKey | None = None,
        listen_port: int = 0,
        fwmark: int = 0,
        mtu: int = DEFAULT_MTU,
        handover: bool | None = None,
    ) -> None:
        """`handover`: follow underlay changes (wgpy.handover); None means on
        unless WGPY_HANDOVER=0."""
        self.name = name
        self._handover_enabled = enabled_by_default() if handover is None else handover
        self._handover: Handover | None = None
        self._private_key = private_key
        self._listen_port = listen_port
        self._fwmark = fwmark
        self._mtu = mtu
        self._peers: dict[PublicKey, Peer] = {}
        self._by_id: dict[int, Peer] = {}
        self._indices: dict[int, Peer] = {}
        self._next_id = 1
        self._sockets: list[socket.socket] = []
        self._tun: Tun | None = None
        self._datapath: Datapath | None = None
        self._checker: CookieChecker | None = None
        self._limiter = Ratelimiter()
        self._last_under_load: float | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None
        self._subscribers: list[trio.MemorySendChannel[DeviceEvent]] = []
        self.closed = trio.Event()
        self.tun_gone = trio.Event()

    # --- lifecycle ------------------------------------------------------

    async def __aenter__(self) -> Device:
        self._tun = Tun.create(self.name, self._mtu)
        self.name = self._tun.name
        try:
            self._datapath = Datapath(
                self._tun.fd, self._mtu, self._tun.vnet_hdr, self._tun.udp_offload
            )
            self._bind(self._listen_port)
            self._set_identity(self._private_key)
            self._tun.set_up()
            self._datapath.start()
            log.info(
                "%s: data plane started (TUN offloads: %s, crypto helper threads: %d)",
                self.name,
                ("TCP+UDP" if self._tun.udp_offload else "TCP") if self._tun.vnet_hdr else "off",
                self._datapath.crypto_helpers,
            )
            self._nursery_cm = trio.open_nursery()
            self._nursery = await self._nursery_cm.__aenter__()
            self._nursery.start_soon(self._event_loop)
            self._nursery.start_soon(self._follow_mtu)
            await self._start_handover()
        except BaseException:
            self._teardown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._nursery_cm is not None
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        if self._datapath is not None:
            self._datapath.stop()
        for s in self._sockets:
            s.close()
        self._sockets = []
        if self._tun is not None:
            self._tun.close()
        for ch in self._subscribers:
            ch.close()
        self.closed.set()

    async def _start_handover(self) -> None:
        """Starts the underlay watcher here, in the UDP sockets' namespace; the
        device runs without it if netlink cannot be used."""
        if not self._handover_enabled or self._nursery is None:
            return
        handover = Handover(self, self._emit)
        try:
            handover.open()
        except OSError as e:
            log.warning("%s: handover off, cannot watch the network: %s", self.name, e)
            return
        self._handover = handover
        await self._nursery.start(handover.run)

    def handover_report(self) -> HandoverReport:
        """Whether handover runs, and its recent decisions (for `wgpy show`)."""
        if self._handover is None:
            return HandoverReport(enabled=False, last_underlay_change=None, events=[])
        return self._handover.report()

    def close(self) -> None:
        """Asks the device to shut down (its ``async with`` block still exits normally)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def datapath(self) -> Datapath:
        if self._datapath is None:
            raise DeviceError("device is not running")
        return self._datapath

    @property
    def tun(self) -> Tun:
        if self._tun is None:
            raise DeviceError("device is not running")
        return self._tun

    # --- interface configuration -----------------------------------------

    @property
    def private_key(self) -> PrivateKey | None:
        return self._private_key

    @property
    def public_key(self) -> PublicKey | None:
        return self._private_key.public_key() if self._private_key else None

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def fwmark(self) -> int:
        return self._fwmark

    def _bind(self, port: int) -> None:
        sockets = open_udp_sockets(port, self._fwmark)
        try:
            self.datapath.set_sockets([s.fileno() for s in sockets])
        except BaseException:
            for s in sockets:
                s.close()
            raise
        for s in self._sockets:
            s.close()
        self._sockets = sockets
        self._listen_port = sockets[0].getsockname()[1]

    def set_listen_port(self, port: int) -> None:
        if port != self._listen_port or not self._sockets:
            self._bind(port)

    def set_fwmark(self, fwmark: int) -> None:
        set_fwmark(self._sockets, fwmark)
        self._fwmark = fwmark
        if self._handover is not None:
            self._handover.recheck_all()

    def _set_identity(self, key: PrivateKey | None) -> None:
        self._private_key = key
        self._checker = CookieChecker(key.public_key()) if key else None

    def set_private_key(self, key: PrivateKey | None) -> None:
        """Changes the private key; every handshake restarts (kernel behaviour)."""
        if key == self._private_key:
            return
        self._set_identity(key)
        pub = self.public_key
        for peer in list(self._peers.values()):
            if pub is not None and peer.public_key == pub:
                # A peer with our own key can never handshake (wireguard-go drops it).
                self.remove_peer(peer.public_key)
                continue
            self.datapath.expire_keypairs(peer.id)
            self._forget_handshake(peer)
            peer.handshake = self._new_handshake(peer.public_key, peer.preshared_key)
            peer.last_sent_handshake = None

    def set_mtu(self, mtu: int) -> None:
        self.tun.set_mtu(mtu)
        self.datapath.set_mtu(mtu)
        self._mtu = mtu

    # --- peers ----------------------------------------------------------

    def _new_handshake(self, pub: PublicKey, psk: PresharedKey | None) -> Handshake:
        key = self._private_key or PrivateKey.generate()
        return Handshake(key, pub, psk)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def peer(self, public_key: PublicKey) -> Peer:
        return self._peers[public_key]

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[str | IPNetwork] = (),
        persistent_keepalive: int = 0,
    ) -> Peer:
        """Adds a peer, or updates it if it exists (like ``wg set``)."""
        if public_key in self._peers:
            return self.update_peer(
                public_key,
                preshared_key=preshared_key,
                endpoint=endpoint,
                allowed_ips=allowed_ips,
                persistent_keepalive=persistent_keepalive,
            )
        peer_id = self._next_id
        self._next_id += 1
        peer = Peer(
            device=self,
            id=peer_id,
            public_key=public_key,
            handshake=self._new_handshake(public_key, preshared_key),
            preshared_key=preshared_key,
            persistent_keepalive=persistent_keepalive,
        )
        self.datapath.add_peer(peer_id)
        self._peers[public_key] = peer
        self._by_id[peer_id] = peer
        if endpoint is not None:
            self.datapath.set_endpoint(peer_id, endpoint)
            self._endpoint_set(peer)
        for net in allowed_ips:
            self.add_allowed_ip(peer, _network(net))
        if self._nursery is None:
            raise DeviceError("device is not running")
        self._nursery.start_soon(peer.run_timers)
        if persistent_keepalive:
            peer.timers.set_persistent_keepalive(persistent_keepalive, trio.current_time())
            peer.poke()
        return peer

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[str | IPNetwork] | None = None,
        replace_allowed_ips: bool = False,
        persistent_keepalive: int | None = None,
    ) -> Peer:
        peer = self._peers[public_key]
        if preshared_key is not None:
            peer.preshared_key = preshared_key
            peer.handshake.set_preshared_key(preshared_key)
        if endpoint is not None:
            self.datapath.set_endpoint(peer.id, endpoint)
            self._endpoint_set(peer)
        if replace_allowed_ips:
            self.datapath.allowed_ips_remove_peer(peer.id)
        for net in allowed_ips or ():
            self.add_allowed_ip(peer, _network(net))
        if persistent_keepalive is not None and persistent_keepalive != peer.persistent_keepalive:
            peer.persistent_keepalive = persistent_keepalive
            peer.timers.set_persistent_keepalive(persistent_keepalive, trio.current_time())
            peer.poke()
        return peer

    def add_allowed_ip(self, peer: Peer, network: IPNetwork) -> None:
        self.datapath.allowed_ip_insert(str(network.network_address), network.prefixlen, peer.id)

    def remove_allowed_ip(self, peer: Peer, network: IPNetwork) -> bool:
        return self.datapath.allowed_ip_remove(
            str(network.network_address), network.prefixlen, peer.id
        )

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        del self._by_id[peer.id]
        peer.cancel_scope.cancel()
        if self._handover is not None:
            self._handover.forget(peer)
        peer.timers.stop()
        self._forget_handshake(peer)
        for index in self.datapath.remove_peer(peer.id):
            self._indices.pop(index, None)

    def stats(self) -> list[PeerStats]:
        return [p.stats() for p in self._peers.values()]

    def subscribe(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[DeviceEvent]:
        """A channel of DeviceEvents; events are dropped for a subscriber that lags."""
        send, receive = trio.open_memory_channel[DeviceEvent](max_buffer)
        self._subscribers.append(send)
        return receive

    def _endpoint_set(self, peer: Peer) -> None:
        if self._handover is not None:
            self._handover.endpoint_set(peer)

    def _emit(self, event: DeviceEvent) -> None:
        for ch in list(self._subscribers):
            try:
                ch.send_nowait(event)
            except trio.WouldBlock:
                pass
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.remove(ch)

    # --- handshakes -----------------------------------------------------

    def _new_index(self, peer: Peer) -> int:
        while True:
            index = secrets.randbits(32)
            if index not in self._indices:
                self._indices[index] = peer
                return index

    def _forget_handshake(self, peer: Peer) -> None:
        pending = peer.handshake.pending_index
        if pending is not None and self._indices.get(pending) is peer:
            del self._indices[pending]
        peer.handshake.clear()

    def _free_indices(self, indices: Sequence[int]) -> None:
        for i in indices:
            self._indices.pop(i, None)

    def initiate_handshake(self, peer: Peer, *, is_retry: bool) -> None:
        """Kernel `wg_packet_send_handshake_initiation`."""
        now = trio.current_time()
        if self._private_key is None:
            return
        if not peer.can_send_initiation(now):
            self._schedule_retry(peer)
            return
        if self.datapath.endpoint(peer.id) is None:
            return
        self._forget_handshake(peer)
        try:
            message = peer.handshake.create_initiation(sender_index=self._new_index(peer))
        except ProtocolError as e:
            log.warning("%s: cannot create a handshake initiation for %s: %s", self.name, peer, e)
            return
        peer.last_sent_handshake = now
        try:
            self.datapath.send_handshake(peer.id, message)
        except OSError as e:
            log.debug("%s: sending initiation to %s failed: %s", self.name, peer, e)
        peer.timers.handshake_initiated(now)
        peer.poke()

    def _schedule_retry(self, peer: Peer) -> None:
        """A request that hit the REKEY_TIMEOUT limit is honoured once it passes."""
        if peer.retry_scheduled or self._nursery is None:
            return
        peer.retry_scheduled = True

        async def retry() -> None:
            try:
                assert peer.last_sent_handshake is not None
                await trio.sleep_until(peer.last_sent_handshake + 5.0)
            finally:
                peer.retry_scheduled = False
            if self._peers.get(peer.public_key) is peer and not self.datapath.has_sending_keypair(
                peer.id
            ):
                if self.datapath.staged_count(peer.id):
                    peer.timers.initiate_handshake(trio.current_time())

        self._nursery.start_soon(retry)

    def zero_key_material(self, peer: Peer) -> None:
        self._free_indices(self.datapath.clear_keypairs(peer.id))
        self._forget_handshake(peer)

    def _under_load(self, backlog: int) -> bool:
        now = trio.current_time()
        if backlog >= MAX_QUEUED_INCOMING_HANDSHAKES // 8:
            self._last_under_load = now
            return True
        return (
            self._last_under_load is not None
            and now - self._last_under_load < UNDER_LOAD_AFTER_TIME
        )

    def _handle_handshake_message(
        self,
        message: bytes,
        source: Endpoint,
        local: tuple[str, int] | None,
        under_load: bool,
    ) -> None:
        checker = self._checker
        if checker is None or self._private_key is None:
            return
        kind = message_type(message)
        if kind in (1, 2):
            if not checker.verify_mac1(message):
                return
            if under_load:
                if not checker.verify_mac2(message, source):
                    reply = checker.create_reply(message, source)
                    with contextlib.suppress(OSError):
                        self.datapath.send_to(source, reply, local)
                    return
                if not self._limiter.allow(ipaddress.ip_address(source[0]), trio.current_time()):
                    return
        if kind == 1:
            self._consume_initiation(message, source, local)
        elif kind == 2:
            self._consume_response(message, source, local)
        elif kind == 3:
            peer = self._indices.get(receiver_index(message))
            if peer is not None:
                with contextlib.suppress(ProtocolError):
                    peer.handshake.consume_cookie_reply(message)

    def _set_endpoint_from(
        self, peer: Peer, source: Endpoint, local: tuple[str, int] | None
    ) -> None:
        old = self.datapath.endpoint(peer.id)
        self.datapath.set_endpoint(peer.id, source, local)
        if old is None or (old[0], old[1]) != source:
            self._endpoint_set(peer)
            self._emit(DeviceEvent("endpoint_changed", time.time(), peer.public_key, source))

    def _consume_initiation(
        self, message: bytes, source: Endpoint, local: tuple[str, int] | None
    ) -> None:
        assert self._private_key is not None
        try:
            initiation = open_initiation(self._private_key, message)
        except ProtocolError:
            return
        peer = self._peers.get(initiation.peer_public_key)
        if peer is None:
            return
        self._forget_handshake(peer)
        try:
            response, session = peer.handshake.respond(
                initiation, sender_index=self._new_index(peer)
            )
        except ProtocolError as e:
            self._forget_handshake(peer)
            log.debug("%s: initiation from %s rejected: %s", self.name, peer, e)
            return
        now = trio.current_time()
        self._set_endpoint_from(peer, source, local)
        self.datapath.note_handshake_received(peer.id, len(message))
        self._free_indices(self.datapath.install_keypair(peer.id, session))
        peer.last_sent_handshake = now
        with contextlib.suppress(OSError):
            self.datapath.send_handshake(peer.id, response)
        peer.timers.session_derived(now)
        peer.poke()

    def _consume_response(
        self, message: bytes, source: Endpoint, local: tuple[str, int] | None
    ) -> None:
        peer = self._indices.get(receiver_index(message))
        if peer is None or peer.handshake.pending_index != receiver_index(message):
            return
        try:
            session = peer.handshake.consume_response(message)
        except ProtocolError as e:
            log.debug("%s: response from %s rejected: %s", self.name, peer, e)
            return
        now = trio.current_time()
        self._set_endpoint_from(peer, source, local)
        self.datapath.note_handshake_received(peer.id, len(message))
        self._free_indices(self.datapath.install_keypair(peer.id, session))
        peer.timers.session_derived(now)
        self._handshake_complete(peer, now)
        # Staged packets, or else a keepalive, confirm the key to the responder.
        self.datapath.send_keepalive(peer.id)
        peer.poke()

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.timers.handshake_complete(now)
        peer.last_handshake = time.time()
        self.datapath.handshake_request_done(peer.id)
        self._emit(DeviceEvent("handshake_completed", peer.last_handshake, peer.public_key))

    async def _follow_mtu(self) -> None:
        """Keeps the data plane's padding cap equal to the interface's MTU.

        The TUN interface may be moved to another namespace, where it can no
        longer be seen from here; the data plane then still raises its MTU
        from the sizes of the packets it reads.
        """
        while True:
            await trio.sleep(MTU_POLL_INTERVAL)
            mtu = await trio.to_thread.run_sync(self.tun.mtu)
            if mtu is not None and mtu != self.datapath.mtu:
                self.datapath.set_mtu(mtu)
                self._mtu = mtu

    # --- the data plane's events -----------------------------------------

    async def _event_loop(self) -> None:
        dp = self.datapath
        while True:
            await trio.lowlevel.wait_readable(dp.event_fd)
            events = dp.take_events()
            backlog = dp.handshake_backlog + sum(1 for e in events if e[0] == "handshake")
            under_load = self._under_load(backlog)
            for event in events:
                try:
                    self._dispatch(event, under_load)
                except ProtocolError:
                    continue
            await trio.lowlevel.checkpoint()

    def _dispatch(self, event: DatapathEvent, under_load: bool) -> None:
        match event:
            case ("handshake", message, source, local):
                self._handle_handshake_message(message, source, local, under_load)
            case ("tun_closed", error):
                log.info("%s: TUN device closed: %s", self.name, error)
                self._emit(DeviceEvent("tun_closed", time.time(), detail=error))
                self.tun_gone.set()
            case ("socket_error", error):
                log.warning("%s: UDP socket error: %s", self.name, error)
            case ("notice", message):
                log.info("%s: %s", self.name, message)
            case ("need_handshake", peer_id, reason):
                if peer := self._by_id.get(peer_id):
                    now = trio.current_time()
                    peer.reconcile(now)
                    if reason == "rekey_on_receive":
                        peer.timers.rekey_on_receive(now)
                    else:
                        peer.timers.initiate_handshake(now)
            case ("key_confirmed", peer_id):
                if peer := self._by_id.get(peer_id):
                    self._handshake_complete(peer, trio.current_time())
                    peer.poke()
            case ("endpoint", peer_id, endpoint):
                if peer := self._by_id.get(peer_id):
                    self._endpoint_set(peer)
                    self._emit(
                        DeviceEvent("endpoint_changed", time.time(), peer.public_key, endpoint)
                    )
            case ("activity", peer_id):
                if peer := self._by_id.get(peer_id):
                    peer.poke()
            case ("unreachable", peer_id):
                if (peer := self._by_id.get(peer_id)) and self._handover is not None:
                    self._handover.unreachable(peer)

    # --- UAPI support ---
    # Used by wgpy.uapi. update_peer cannot clear a preshared key (None means
    # "unchanged"), and ipaddress objects cost about 6 µs each, so the text
    # variants below keep `wg setconf`/`wg showconf` of 100,000s of allowed
    # IPs at well under a second.

    def clear_preshared_key(self, public_key: PublicKey) -> None:
        """Removes a peer's preshared key (UAPI `preshared_key=` all zeros)."""
        peer = self._peers[public_key]
        peer.preshared_key = None
        peer.handshake.set_preshared_key(None)

    def add_allowed_ip_prefixes(self, peer: Peer, prefixes: Iterable[tuple[str, int]]) -> None:
        """`add_allowed_ip` for many (address text, prefix length) pairs; the
        caller has validated them (the data plane masks host bits)."""
        insert = self.datapath.allowed_ip_insert
        for address, cidr in prefixes:
            insert(address, cidr, peer.id)

    def uapi_stats(self) -> list[tuple[Peer, PeerStats, list[tuple[str, int]]]]:
        """Per peer: the peer, its PeerStats with `allowed_ips` left empty, and
        its allowed IPs as (address text, prefix length) pairs."""
        return [
            (peer, peer.stats(include_allowed_ips=False), self.datapath.allowed_ips(peer.id))
            for peer in self._peers.values()
        ]
