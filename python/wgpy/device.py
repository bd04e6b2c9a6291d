"""A running WireGuard device: a TUN interface, UDP sockets and the Rust data
plane, configured and timed from Trio.

- The data plane (Rust) moves packets and runs the handshakes; it owns
  receiver indices, keypairs, endpoints and counters (rust/src/datapath/).
- This object owns the configuration (private key, port, fwmark, MTU, peers
  and their keys) and runs, in
  one nursery while the device is open: the data plane's event loop, one
  task per peer (its timers, in the peer's own cancel scope), the MTU
  follower (wgpy.link), the resolver of endpoint names (wgpy.names), the
  underlay watcher (wgpy.handover) and, given a registry, the etcd sync
  (wgpy.registry).
- Endpoints as configured (an address, or names kept current) are
  wgpy.endpoints'; handover re-announces a switched one from its new path.
- Configuration changes from every source (UAPI, registry) take
  `config_lock`, so none sees another half-applied.
- The event loop only routes the data plane's notifications: a peer's
  ("re-read me") to that peer's task, the device's (TUN closed, socket
  errors, notices) to the log and the subscribers. It yields to Trio after
  every batch.
- After every change to a peer's configuration its staged packets are sent
  (or a handshake started for them), as the kernel and wireguard-go do;
  turning a peer's persistent keepalive on from 0, a new peer's included,
  sends a keepalive at once.
- `before_start` runs once the TUN interface and the UDP sockets are open
  and before any data-plane thread exists: a daemon drops its privileges
  there (wgpy.privileges), so every thread runs with what is left.
- Events (wgpy.events): a handshake completed or given up after the
  retries, an endpoint moved by the peer's packets, a peer removed, the TUN
  device closed, and handover's decisions. Give-ups are also counted for
  the metrics (`uapi_counters`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import trio

from wgpy._core import (
    Datapath,
    PeerState,
    PresharedKey,
    PrivateKey,
    PublicKey,
    data_plane_queues,
)
from wgpy.endpoints import Endpoints, candidates
from wgpy.events import DeviceEvent, Subscribers
from wgpy.handover import Handover, HandoverReport, enabled_by_default
from wgpy.link import follow_mtu
from wgpy.names import Address, NamedEndpoint
from wgpy.peer import Endpoint, IPNetwork, Peer, PeerStats
from wgpy.tasks import background_tasks
from wgpy.tun import DEFAULT_MTU, Tun, open_udp_sockets, set_fwmark

if TYPE_CHECKING:
    from wgpy.registry.config import RegistryConfig
    from wgpy.registry.report import RegistryReport
    from wgpy.registry.sync import RegistrySync

log = logging.getLogger("wgpy")

# Data-plane events handled before yielding to Trio.
EVENT_BATCH = 64


class DeviceError(Exception):
    """The device could not be set up or was used wrongly."""


_T = TypeVar("_T")


def running(part: _T | None) -> _T:
    """A part that exists only while the device runs (None otherwise)."""
    if part is None:
        raise DeviceError("device is not running")
    return part


def _registry_config(registry: str | RegistryConfig | None) -> RegistryConfig | None:
    if not isinstance(registry, str):
        return registry
    from wgpy.registry.config import parse_registry_url

    return parse_registry_url(registry)


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
        before_start: Callable[[], None] | None = None,
        registry: str | RegistryConfig | None = None,
    ) -> None:
        """`handover`: follow underlay changes (wgpy.handover); None means on
        unless WGPY_HANDOVER=0. `before_start`: see the module's rules.
        `registry`: an etcd://HOST:PORT/NETWORK URL (or a parsed one) whose
        peers this device follows (wgpy.registry; raises RegistryConfigError
        for a bad URL)."""
        self.name = name
        self._before_start = before_start
        self._handshakes_failed = 0
        self._registry_config = _registry_config(registry)
        self._registry: RegistrySync | None = None
        self.config_lock = trio.Lock()
        self._handover_enabled = enabled_by_default() if handover is None else handover
        self._handover: Handover | None = None
        self._private_key = private_key
        self._listen_port = listen_port
        self._fwmark = fwmark
        self._mtu = mtu
        self._peers: dict[PublicKey, Peer] = {}
        self._by_id: dict[int, Peer] = {}
        self._next_id = 1
        self._sockets: list[socket.socket] = []
        self._tun: Tun | None = None
        self._datapath: Datapath | None = None
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._subscribers = Subscribers()
        self.closed = trio.Event()
        self.tun_gone = trio.Event()
        self._endpoints = Endpoints(
            lambda: self.name,
            datapath=lambda: self.datapath,
            peer=self._by_id.get,
            handover=lambda: self._handover,
            fwmark=lambda: self._fwmark,
            emit=self._subscribers.emit,
        )

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Device:
        # A failure while starting has already undone what _running() had done.
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._running())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        """The device from creation to teardown; yields while it runs."""
        with self._resources():
            self._open_datapath()
            async with background_tasks() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._event_loop)
                await self._follow_inside(nursery)
                await nursery.start(self._endpoints.names.run)
                await self._start_handover(nursery)
                await self._start_registry(nursery)
                try:
                    yield
                finally:
                    self._nursery = None
                    for peer in self._peers.values():
                        peer.remove()

    # --- the inside: a TUN device here; wgpy.userspace overrides these four ---

    def _open_inside(self) -> None:
        """Creates the TUN interface."""
        self._tun = Tun.create(self.name, self._mtu, queues=data_plane_queues())
        self.name = self._tun.name

    def _close_inside(self) -> None:
        if self._tun is not None:
            self._tun.close()

    def _new_datapath(self) -> Datapath:
        tun = self.tun
        return Datapath(tun.fd, self._mtu, tun.vnet_hdr, tun.udp_offload)

    def _start_inside(self) -> str:
        """Brings the inside up once the data plane has its sockets and key;
        returns what the start log line says of it."""
        tun = self.tun
        tun.set_up()
        offloads = ("TCP+UDP" if tun.udp_offload else "TCP") if tun.vnet_hdr else "off"
        return f"TUN offloads: {offloads}"

    async def _follow_inside(self, nursery: trio.Nursery) -> None:
        """Starts following the interface's MTU (wgpy.link)."""
        await nursery.start(follow_mtu, self.tun.fd, self.datapath)

    @contextlib.contextmanager
    def _resources(self) -> Iterator[None]:
        """Creates the inside; on the way out closes everything this
        device opened, whatever happened."""
        self._open_inside()
        try:
            yield
        finally:
            if self._datapath is not None:
                self._datapath.stop()
            for s in self._sockets:
                s.close()
            self._sockets = []
            self._close_inside()
            self._subscribers.close()
            self.closed.set()

    def _open_datapath(self) -> None:
        sockets = open_udp_sockets(self._listen_port, self._fwmark, data_plane_queues())
        try:
            if self._before_start is not None:
                self._before_start()
            # The data plane's threads (lanes, crypto workers, handshakes)
            # start with datapath.start(), after this.
            self._datapath = self._new_datapath()
        except BaseException:
            for s in sockets:
                s.close()
            raise
        self._use_sockets(sockets)
        self._datapath.set_private_key(self._private_key)
        inside = self._start_inside()
        self._datapath.start()
        log.info(
            "%s: data plane started (%s, queues: %d, crypto helper threads: %d)",
            self.name,
            inside,
            self._datapath.queues,
            self._datapath.crypto_helpers,
        )

    async def _start_handover(self, nursery: trio.Nursery) -> None:
        """Starts the underlay watcher here, in the UDP sockets' namespace; the
        device runs without it if netlink cannot be used."""
        if not self._handover_enabled:
            return
        handover = Handover(
            self.name,
            self.datapath,
            peers=lambda: [(p.id, p.public_key) for p in self._peers.values()],
            fwmark=lambda: self._fwmark,
            emit=self._subscribers.emit,
            choices=self._endpoints.names,
        )
        try:
            handover.open()
        except OSError as e:
            log.warning("%s: handover off, cannot watch the network: %s", self.name, e)
            return
        self._handover = handover
        await nursery.start(handover.run)

    def handover_report(self) -> HandoverReport:
        """Whether handover runs, and its recent decisions (for `wgpy show`)."""
        if self._handover is None:
            return HandoverReport(enabled=False, last_underlay_change=None, events=[])
        return self._handover.report()

    async def _start_registry(self, nursery: trio.Nursery) -> None:
        if self._registry_config is None:
            return
        from wgpy.registry.sync import RegistrySync  # imports the HTTP client

        self._registry = RegistrySync(self._registry_config, self, self._subscribers.emit)
        await nursery.start(self._registry.run)

    def registry_report(self) -> RegistryReport | None:
        """The registry sync's status (for `wgpy show`); None without a registry."""
        return self._registry.report() if self._registry is not None else None

    def close(self) -> None:
        """Asks the device to shut down (its ``async with`` block still exits normally)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def datapath(self) -> Datapath:
        return running(self._datapath)

    @property
    def tun(self) -> Tun:
        return running(self._tun)

    def _running_nursery(self) -> trio.Nursery:
        return running(self._nursery)

    # --- interface configuration ------------------------------------------------------

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
        self._use_sockets(open_udp_sockets(port, self._fwmark, data_plane_queues()))

    def _use_sockets(self, sockets: list[socket.socket]) -> None:
        """Hands `sockets` to the data plane (or closes them if it refuses)."""
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

    def set_private_key(self, key: PrivateKey | None) -> None:
        """Changes the private key; every handshake restarts (kernel behaviour)."""
        if key == self._private_key:
            return
        own = key.public_key() if key is not None else None
        if own is not None and own in self._peers:
            # A peer with our own key can never handshake (wireguard-go drops it).
            self.remove_peer(own)
        self._private_key = key
        self.datapath.set_private_key(key)

    def set_mtu(self, mtu: int) -> None:
        self.tun.set_mtu(mtu)
        self.datapath.set_mtu(mtu)
        self._mtu = mtu

    # --- peers ------------------------------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def peer(self, public_key: PublicKey) -> Peer:
        return self._peers[public_key]

    async def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | str | None = None,
        endpoints: Iterable[Endpoint | str] | None = None,
        allowed_ips: Iterable[str | IPNetwork] = (),
        persistent_keepalive: int = 0,
    ) -> Peer:
        """Adds a peer, or updates it if it exists (like ``wg set``); its
        timers are running when this returns, and its endpoint resolved if
        it is a name (wgpy.names; a name that does not resolve yet leaves
        the peer without an endpoint until it does).

        `endpoint`: ("host", port) or "host:port", an address or a name;
        `endpoints`: more candidates, tried after it (wgpy's extension)."""
        if public_key in self._peers:
            return self.update_peer(
                public_key,
                preshared_key=preshared_key,
                endpoint=endpoint,
                endpoints=endpoints,
                allowed_ips=allowed_ips,
                persistent_keepalive=persistent_keepalive,
            )
        given = candidates(endpoint, endpoints)  # ValueError before any change
        nursery = self._running_nursery()
        peer = self._new_peer(public_key, preshared_key)
        await nursery.start(peer.run)
        self.update_peer(public_key, allowed_ips=allowed_ips)
        if given is not None:
            self._endpoints.configure(peer, given)
            await self._endpoints.names.refresh(peer.id)
        # Last: a keepalive turned on goes out at once, to the endpoint.
        return self.update_peer(public_key, persistent_keepalive=persistent_keepalive)

    def _new_peer(self, public_key: PublicKey, preshared_key: PresharedKey | None) -> Peer:
        peer_id = self._next_id
        self._next_id += 1
        self.datapath.add_peer(peer_id, public_key, preshared_key)
        peer = Peer(self.datapath, self, peer_id, public_key, preshared_key)
        self._peers[public_key] = peer
        self._by_id[peer_id] = peer
        return peer

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | str | None = None,
        endpoints: Iterable[Endpoint | str] | None = None,
        allowed_ips: Iterable[str | IPNetwork] | None = None,
        replace_allowed_ips: bool = False,
        persistent_keepalive: int | None = None,
    ) -> Peer:
        """Changes what is given (None: unchanged), then sends the staged
        packets. A named endpoint is resolved in the background."""
        peer = self._peers[public_key]
        given = candidates(endpoint, endpoints)  # ValueError before any change
        dp = self.datapath
        if preshared_key is not None:
            peer.preshared_key = preshared_key
            dp.set_preshared_key(peer.id, preshared_key)
        if given is not None:
            self._endpoints.configure(peer, given)
        if replace_allowed_ips:
            dp.allowed_ips_remove_peer(peer.id)
        for net in allowed_ips or ():
            self.add_allowed_ip(peer, _network(net))
        if persistent_keepalive is not None:
            peer.timers.set_persistent_keepalive(persistent_keepalive, trio.current_time())
        dp.send_staged(peer.id)
        return peer

    def set_endpoint_names(self, public_key: PublicKey, names: list[Address]) -> None:
        """The candidates behind a peer's endpoint (UAPI `wgpy_endpoint_name`),
        leaving the current address as it is until they are resolved."""
        self._endpoints.set_names(self._peers[public_key], names)

    def endpoint_names(self, public_key: PublicKey) -> NamedEndpoint | None:
        """The peer's names and what is known of them, if it has any."""
        return self._endpoints.named(self._peers[public_key])

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
        peer.remove()
        self._endpoints.forget(peer)
        if self._handover is not None:
            self._handover.forget(peer.id, peer.public_key)
        self.datapath.remove_peer(peer.id)
        self._subscribers.emit(DeviceEvent("peer_removed", time.time(), public_key))

    def stats(self) -> list[PeerStats]:
        return [p.stats() for p in self._peers.values()]

    def subscribe(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[DeviceEvent]:
        """A channel of DeviceEvents; a subscriber that lags loses events (wgpy.events)."""
        return self._subscribers.subscribe(max_buffer)

    # --- what peers report (PeerListener) ----------------------------------------------

    def handshake_completed(self, peer: Peer, state: PeerState) -> None:
        self._endpoints.worked(peer, state.endpoint)
        at = state.last_handshake if state.last_handshake is not None else time.time()
        self._subscribers.emit(DeviceEvent("handshake_completed", at, peer.public_key))

    def endpoint_changed(self, peer: Peer, endpoint: Endpoint | None) -> None:
        self._endpoints.worked(peer, endpoint)
        if self._handover is not None:
            self._handover.endpoint_set(peer.id)
        if endpoint is not None:
            event = DeviceEvent("endpoint_changed", time.time(), peer.public_key, endpoint)
            self._subscribers.emit(event)

    def handshake_failed(self, peer: Peer) -> None:
        self._handshakes_failed += 1
        log.info("%s: %r: handshake did not complete after the retries", self.name, peer)
        self._subscribers.emit(DeviceEvent("handshake_failed", time.time(), peer.public_key))

    def held(self, peer: Peer) -> None:
        if self._handover is not None:
            self._handover.unreachable(peer.id)

    def handshake_unanswered(self, peer: Peer) -> None:
        self._endpoints.unanswered(peer)

    # --- the data plane's events -----------------------------------------------------

    async def _event_loop(self) -> None:
        dp = self.datapath
        while True:
            await trio.lowlevel.wait_readable(dp.event_fd)
            for event in dp.take_events(EVENT_BATCH):
                self._dispatch(event)
            await trio.lowlevel.checkpoint()

    def _dispatch(self, event: tuple[str, int | str]) -> None:
        match event:
            case ("peer", int(peer_id)):
                if peer := self._by_id.get(peer_id):
                    peer.poke()
            case ("tun_closed", str(error)):
                log.info("%s: TUN device closed: %s", self.name, error)
                self._subscribers.emit(DeviceEvent("tun_closed", time.time(), detail=error))
                self.tun_gone.set()
            case ("socket_error", str(error)):
                log.warning("%s: UDP socket error: %s", self.name, error)
            case ("notice", str(message)):
                log.info("%s: %s", self.name, message)

    # --- UAPI support ---
    # Used by wgpy.changes. update_peer cannot clear a preshared key (None
    # means "unchanged"), and ipaddress objects cost about 6 µs each, so the
    # text variants below keep `wg setconf`/`wg showconf` of 100,000s of
    # allowed IPs at well under a second.

    def clear_preshared_key(self, public_key: PublicKey) -> None:
        """Removes a peer's preshared key (UAPI `preshared_key=` all zeros)."""
        peer = self._peers[public_key]
        peer.preshared_key = None
        self.datapath.set_preshared_key(peer.id, None)

    def add_allowed_ip_prefixes(self, peer: Peer, prefixes: Iterable[tuple[str, int]]) -> None:
        """`add_allowed_ip` for many (address text, prefix length) pairs; the
        caller has validated them (the data plane masks host bits)."""
        insert = self.datapath.allowed_ip_insert
        for address, cidr in prefixes:
            insert(address, cidr, peer.id)

    def uapi_counters(self) -> list[tuple[str, int]]:
        """The device's counters for the UAPI's `wgpy_stat_*` keys: the data
        plane's, its state, give-ups and handover's decisions."""
        stats = self.datapath.stats()
        counters = [
            *stats.counters(),
            ("under_load", int(stats.under_load)),
            ("indices", stats.indices),
            ("handshake_queue", stats.handshake_queue),
            ("handshakes_failed", self._handshakes_failed),
        ]
        if self._handover is not None:
            counters += sorted(self._handover.counts.items())
        return counters

    def allowed_ip_prefixes(self, public_key: PublicKey) -> list[tuple[str, int]]:
        """A peer's allowed IPs as (address text, prefix length) pairs."""
        return self.datapath.allowed_ips(self._peers[public_key].id)

    def uapi_stats(self) -> list[tuple[Peer, PeerStats, list[tuple[str, int]]]]:
        """Per peer: the peer, its PeerStats with `allowed_ips` left empty, and
        its allowed IPs as (address text, prefix length) pairs."""
        return [
            (peer, peer.stats(include_allowed_ips=False), self.datapath.allowed_ips(peer.id))
            for peer in self._peers.values()
        ]
