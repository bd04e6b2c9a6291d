"""A WireGuard device with a userspace TCP/IP stack inside instead of a TUN
device: no root, no capabilities, no routes or addresses on the host.

- The data plane, the handshakes, the timers, roaming, handover and UAPI
  are `wgpy.Device`'s own; only the inside changes (the Rust `Netstack`
  takes decrypted packets and sends through the data plane's send path,
  rust/src/datapath/inside.rs). Nothing that needs privileges runs: there
  is no TUN to create or follow, the UDP sockets fall back to the buffer
  sizes an ordinary user may set, handover only reads netlink.
- The stack's addresses are the configuration's `Address` (one IPv4 and
  one IPv6 at most); names resolve through its `DNS` servers, over the
  tunnel (wgpy.dns).
- Applications get Trio streams (`open_tcp_stream`, `serve_tcp`,
  `listen_tcp`) and UDP sockets (`open_udp_socket`): each stream is one end
  of a local socket pair whose other end the stack splices to the TCP
  connection in Rust, so bytes never pass through Python twice.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

import trio

from wgpy import dns
from wgpy._core import Datapath, Netstack, PrivateKey
from wgpy.config import Config, IPInterface, resolve_endpoint
from wgpy.device import Device, DeviceError, running
from wgpy.netstack import Accepted, StackEvents
from wgpy.tun import DEFAULT_MTU
from wgpy.tunnel_udp import TunnelUdpSocket

log = logging.getLogger("wgpy")

# Bytes each TCP connection buffers to receive inside the stack (its window).
DEFAULT_TCP_BUFFER = 256 * 1024
# Bytes each TCP connection buffers to send inside the stack: its most in
# flight (the stack's own default; why, in rust/src/netstack/tcp.rs). A long
# path wants more: about this much per round trip.
DEFAULT_TCP_SEND_BUFFER = Netstack.DEFAULT_TCP_SEND_BUFFER
DEFAULT_CONNECT_TIMEOUT = 10.0

StreamHandler = Callable[[trio.SocketStream], Awaitable[object]]


def _interface(value: str | IPInterface) -> IPInterface:
    return ipaddress.ip_interface(value) if isinstance(value, str) else value


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _stream(sock: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


class TunnelListener(trio.abc.Listener[trio.SocketStream]):
    """Connections to a TCP port inside the tunnel, as Trio streams."""

    def __init__(
        self, device: UserspaceDevice, port: int, accepted: trio.MemoryReceiveChannel[Accepted]
    ) -> None:
        self._device = device
        self.port = port
        self._accepted = accepted

    async def accept_with_address(self) -> tuple[trio.SocketStream, tuple[str, int]]:
        """The next connection and the address it came from."""
        try:
            accepted = await self._accepted.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None
        ours, theirs = _socket_pair()
        try:
            self._device.netstack.attach(accepted.id, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _stream(ours), accepted.remote

    async def accept(self) -> trio.SocketStream:
        stream, _ = await self.accept_with_address()
        return stream

    async def aclose(self) -> None:
        with contextlib.suppress(DeviceError):  # a stopped device has no listeners
            self._device.stack_events.unlisten(self.port)
        self._accepted.close()
        await trio.lowlevel.checkpoint()


class UserspaceDevice(Device):
    """A WireGuard device whose inside is a userspace TCP/IP stack.

    ``async with UserspaceDevice.from_config(wgpy.load("wg0.conf")) as dev:``
    then ``stream = await dev.open_tcp_stream("10.0.0.1", 80)``.
    """

    def __init__(
        self,
        name: str = "wgpy",
        *,
        addresses: Iterable[str | IPInterface],
        dns_servers: Iterable[str] = (),
        private_key: PrivateKey | None = None,
        listen_port: int = 0,
        mtu: int = DEFAULT_MTU,
        handover: bool | None = None,
        tcp_buffer: int = DEFAULT_TCP_BUFFER,
        tcp_send_buffer: int = DEFAULT_TCP_SEND_BUFFER,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(
            name, private_key=private_key, listen_port=listen_port, mtu=mtu, handover=handover
        )
        self.addresses = [_interface(a) for a in addresses]
        if not self.addresses:
            raise DeviceError("a userspace device needs at least one Address")
        self.dns_servers = list(dns_servers)
        self.connect_timeout = connect_timeout
        self._tcp_buffer = tcp_buffer
        self._tcp_send_buffer = tcp_send_buffer
        self._netstack: Netstack | None = None
        self._events: StackEvents | None = None
        self._config: Config | None = None

    @classmethod
    def from_config(cls, config: Config, name: str = "wgpy", **options: object) -> UserspaceDevice:
        """A device from a wg-quick file: key, port, MTU, Address and DNS of
        its [Interface]; its peers are added on entry."""
        iface = config.interface
        device = cls(
            name,
            addresses=iface.addresses,
            dns_servers=iface.dns_servers,
            private_key=iface.private_key,
            listen_port=iface.listen_port or 0,
            mtu=iface.mtu or DEFAULT_MTU,
            **options,  # type: ignore[arg-type]
        )
        device._config = config
        return device

    async def __aenter__(self) -> UserspaceDevice:
        await super().__aenter__()
        try:
            if self._config is not None:
                await self._add_config_peers(self._config)
        except BaseException as e:
            await self.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await super().__aexit__(exc_type, exc, tb)

    async def _add_config_peers(self, config: Config) -> None:
        for p in config.peers:
            endpoint = None
            if p.endpoint is not None:
                endpoint = await trio.to_thread.run_sync(resolve_endpoint, p.endpoint)
            await self.add_peer(
                p.public_key,
                preshared_key=p.preshared_key,
                endpoint=endpoint,
                allowed_ips=p.allowed_ips,
                persistent_keepalive=p.persistent_keepalive or 0,
            )

    # --- the inside (Device's hooks) ----------------------------------------------------

    def _open_inside(self) -> None:
        addresses = [(str(a.ip), a.network.prefixlen) for a in self.addresses]
        self._netstack = Netstack(addresses, self._mtu, self._tcp_buffer, self._tcp_send_buffer)
        self._events = StackEvents(self._netstack)

    def _close_inside(self) -> None:
        # Both exist only while the device runs: afterwards the API says so
        # (DeviceError) instead of queueing work for a stopped stack.
        events, self._events = self._events, None
        stack, self._netstack = self._netstack, None
        if events is not None:
            events.close()
        if stack is not None:
            stack.stop()

    def _new_datapath(self) -> Datapath:
        return Datapath.userspace(self.netstack, self._mtu)

    def _start_inside(self) -> str:
        self.netstack.start(self.datapath)
        return "userspace stack on " + ", ".join(str(a) for a in self.addresses)

    async def _follow_inside(self, nursery: trio.Nursery) -> None:
        # No interface to follow: the stack's MTU is the configured one.
        await nursery.start(self.stack_events.run)

    def set_mtu(self, mtu: int) -> None:
        raise DeviceError("the MTU of a userspace device is fixed when it starts")

    @property
    def netstack(self) -> Netstack:
        return running(self._netstack)

    @property
    def stack_events(self) -> StackEvents:
        return running(self._events)

    # --- the application API ------------------------------------------------------------

    def _families(self) -> list[int]:
        """DNS query types for the address families the tunnel has, IPv4 first."""
        versions = {a.version for a in self.addresses}
        return [t for v, t in ((4, dns.A), (6, dns.AAAA)) if v in versions]

    async def resolve(self, host: str) -> list[str]:
        """The addresses of `host` (an IP literal is returned as is), asked
        of the configuration's DNS servers through the tunnel; raises
        socket.gaierror."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        async with self.open_udp_socket() as sock:
            return await dns.resolve(sock, self.dns_servers, host, self._families())

    def _check_route(self, address: str) -> None:
        """Fails at once, rather than after a timeout, when no peer's
        AllowedIPs include the address."""
        if self.datapath.allowed_ip_lookup(address) is None:
            raise OSError(errno.ENETUNREACH, f"no peer's AllowedIPs include {address}")

    def _explain_timeout(self, address: str, error: OSError) -> OSError:
        peer_id = self.datapath.allowed_ip_lookup(address)
        peer = self._by_id.get(peer_id) if peer_id is not None else None
        if peer is not None and peer.stats().last_handshake is None:
            endpoint = peer.stats().endpoint
            where = f" at {endpoint[0]}:{endpoint[1]}" if endpoint else " (it has no endpoint)"
            return TimeoutError(
                error.errno, f"{error.strerror}: no handshake with the peer{where} yet"
            )
        return error

    async def connect_tcp(self, host: str, port: int, fd: int | None = None) -> tuple[int, str]:
        """Resolves `host`, checks the route and connects (splicing `fd` to
        the connection if given); returns the stack's connection id and the
        address connected to. Raises OSError (ConnectionRefusedError,
        TimeoutError, ENETUNREACH) or socket.gaierror."""
        addresses = await self.resolve(host)
        address = addresses[0]
        self._check_route(address)
        try:
            id_ = await self.stack_events.connect(
                address, port, fd=fd, timeout=self.connect_timeout
            )
        except TimeoutError as e:
            raise self._explain_timeout(address, e) from None
        return id_, address

    async def open_tcp_stream(self, host: str, port: int) -> trio.SocketStream:
        """A TCP connection through the tunnel, as a Trio stream."""
        ours, theirs = _socket_pair()
        try:
            await self.connect_tcp(host, port, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _stream(ours)

    def listen_tcp(self, port: int = 0, *, backlog: int = 1024) -> TunnelListener:
        """Accepts TCP connections to `port` of the tunnel addresses (0: any free port)."""
        bound, accepted = self.stack_events.listen(port, backlog)
        return TunnelListener(self, bound, accepted)

    async def serve_tcp(
        self,
        port: int,
        handler: StreamHandler,
        *,
        backlog: int = 1024,
        task_status: trio.TaskStatus[list[TunnelListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Runs `handler(stream)` for every connection to `port` inside the
        tunnel, like trio.serve_tcp; `task_status` gets the listener."""
        listener = self.listen_tcp(port, backlog=backlog)
        async with listener:
            await trio.serve_listeners(handler, [listener], task_status=task_status)

    def open_udp_socket(self, port: int = 0) -> TunnelUdpSocket:
        """A UDP port of the tunnel addresses (0: any free port)."""
        return TunnelUdpSocket.bind(self.netstack, port)
