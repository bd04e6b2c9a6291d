"""UDP through the tunnel: a `TunnelUdpSocket` is a port of the userspace
stack, bridged to a local SOCK_SEQPACKET socket where each datagram carries
the far side's address in a fixed prefix (rust/src/netstack/udp.rs).

Datagrams are never queued without bound: what the stack cannot buffer or
this socket's reader does not take in time is dropped, as UDP may.
"""

from __future__ import annotations

import ipaddress
import socket
from types import TracebackType

import trio

from wgpy._core import Netstack

ADDR_LEN = Netstack.UDP_ADDR_LEN
MAX_DATAGRAM = 65507


def encode_address(address: tuple[str, int]) -> bytes:
    """The prefix for a datagram to `address` (an IP literal and a port)."""
    host, port = address
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    return ip.packed + port.to_bytes(2, "big")


def decode_address(prefix: bytes) -> tuple[str, int]:
    ip = ipaddress.IPv6Address(prefix[:16])
    host = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    return host, int.from_bytes(prefix[16:ADDR_LEN], "big")


class TunnelUdpSocket:
    """A UDP port inside the tunnel. Use `sendto`/`recvfrom` with IP
    literals (resolve names with the device first); close it (or use it as
    an async context manager) to free the port."""

    def __init__(self, sock: trio.socket.SocketType, port: int) -> None:
        self._sock = sock
        self.port = port

    @classmethod
    def bind(cls, stack: Netstack, port: int = 0) -> TunnelUdpSocket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            bound = stack.udp_bind(port, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(trio.socket.from_stdlib_socket(ours), bound)

    async def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} bytes is too large")
        await self._sock.send(encode_address(address) + data)

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        """The next datagram and its sender."""
        while True:
            data = await self._sock.recv(ADDR_LEN + 65536)
            if not data:
                raise trio.ClosedResourceError("the stack closed this UDP port")
            if len(data) >= ADDR_LEN:
                return data[ADDR_LEN:], decode_address(data[:ADDR_LEN])

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TunnelUdpSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> TunnelUdpSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
