"""SOCKS5 (RFC 1928) into the tunnel, no authentication: CONNECT to an
address or a name (resolved by the tunnel's DNS: socks5h), and UDP
ASSOCIATE (unfragmented datagrams, accepted from the client's address only,
for as long as its TCP connection stays open).
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import trio

from wgpy.proxy_io import REQUEST_TIMEOUT, _Closed, failure_kind, read_exactly
from wgpy.rootless import bind_family
from wgpy.tunnel_udp import TunnelUdpSocket
from wgpy.userspace import UserspaceDevice

log = logging.getLogger("wgpy")

VERSION = 5
CONNECT, UDP_ASSOCIATE = 1, 3
ATYP_V4, ATYP_NAME, ATYP_V6 = 1, 3, 4
# Reply codes (RFC 1928 §6).
OK, FAILURE, NET_UNREACHABLE, HOST_UNREACHABLE, REFUSED = 0, 1, 3, 4, 5
COMMAND_UNSUPPORTED, ATYP_UNSUPPORTED = 7, 8
REPLY_OF = {"refused": REFUSED, "timeout": HOST_UNREACHABLE, "unreachable": NET_UNREACHABLE}


def encode_address(host: str, port: int) -> bytes:
    ip = ipaddress.ip_address(host)
    atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
    return bytes([atyp]) + ip.packed + port.to_bytes(2, "big")


def reply(code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    return bytes([VERSION, code, 0]) + encode_address(*bound)


async def read_address(sock: trio.socket.SocketType, atyp: int) -> str:
    if atyp == ATYP_V4:
        return str(ipaddress.IPv4Address(await read_exactly(sock, 4)))
    if atyp == ATYP_V6:
        return str(ipaddress.IPv6Address(await read_exactly(sock, 16)))
    if atyp == ATYP_NAME:
        length = (await read_exactly(sock, 1))[0]
        name = await read_exactly(sock, length)
        return name.decode("ascii")  # a UnicodeDecodeError (a ValueError) drops the client
    await sock.send(reply(ATYP_UNSUPPORTED))
    raise _Closed


async def handle(device: UserspaceDevice, sock: trio.socket.SocketType) -> None:
    with trio.fail_after(REQUEST_TIMEOUT):
        command, host, port = await read_request(sock)
    if command == CONNECT:
        await connect(device, sock, host, port)
    elif command == UDP_ASSOCIATE:
        await associate(device, sock)
    else:
        await sock.send(reply(COMMAND_UNSUPPORTED))


async def read_request(sock: trio.socket.SocketType) -> tuple[int, str, int]:
    """The method negotiation, then the request: (command, host, port)."""
    version, count = await read_exactly(sock, 2)
    methods = await read_exactly(sock, count)
    if version != VERSION:
        raise _Closed
    if 0 not in methods:
        await sock.send(b"\x05\xff")  # no acceptable method
        raise _Closed
    await sock.send(b"\x05\x00")
    version, command, _, atyp = await read_exactly(sock, 4)
    host = await read_address(sock, atyp)
    port = int.from_bytes(await read_exactly(sock, 2), "big")
    return command, host, port


async def connect(
    device: UserspaceDevice, sock: trio.socket.SocketType, host: str, port: int
) -> None:
    try:
        id_, _ = await device.connect_tcp(host, port)
    except OSError as e:
        log.info("SOCKS5 CONNECT %s:%d: %s", host, port, e)
        await sock.send(reply(REPLY_OF.get(failure_kind(e), FAILURE)))
        return
    try:
        await sock.send(reply(OK))
    except BaseException:
        device.netstack.abort(id_)
        raise
    # The stack takes a copy of the socket and splices it; ours is closed by the caller.
    device.netstack.attach(id_, sock.fileno())


async def associate(device: UserspaceDevice, control: trio.socket.SocketType) -> None:
    client_host = control.getpeername()[0]
    local_host = control.getsockname()[0]
    relay = trio.socket.socket(bind_family(local_host), socket.SOCK_DGRAM)
    with relay, device.open_udp_socket() as tunnel:
        await relay.bind((local_host, 0))
        await control.send(reply(OK, relay.getsockname()[:2]))
        client: list[tuple[str, int]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_to_tunnel, device, relay, tunnel, client_host, client)
            nursery.start_soon(_to_client, relay, tunnel, client)
            # The association ends with the TCP connection (RFC 1928 §7).
            while await control.recv(1024):
                pass
            nursery.cancel_scope.cancel()


async def _to_tunnel(
    device: UserspaceDevice,
    relay: trio.socket.SocketType,
    tunnel: TunnelUdpSocket,
    client_host: str,
    client: list[tuple[str, int]],
) -> None:
    while True:
        data, source = await relay.recvfrom(65535)
        if source[0] != client_host or len(data) < 4 or data[2] != 0:
            continue  # another host, or a fragment: dropped (RFC 1928 §7)
        try:
            host, port, payload = _parse_udp_header(data)
            address = (await device.resolve(host))[0]
        except (ValueError, OSError):
            continue
        client[:] = [source[:2]]
        await tunnel.sendto(payload, (address, port))


def _parse_udp_header(data: bytes) -> tuple[str, int, bytes]:
    atyp = data[3]
    if atyp == ATYP_V4:
        end = 8
        host = str(ipaddress.IPv4Address(data[4:8]))
    elif atyp == ATYP_V6:
        end = 20
        host = str(ipaddress.IPv6Address(data[4:20]))
    elif atyp == ATYP_NAME:
        end = 5 + data[4]
        host = data[5:end].decode("idna")
    else:
        raise ValueError("address type")
    if len(data) < end + 2:
        raise ValueError("short datagram")
    return host, int.from_bytes(data[end : end + 2], "big"), data[end + 2 :]


async def _to_client(
    relay: trio.socket.SocketType, tunnel: TunnelUdpSocket, client: list[tuple[str, int]]
) -> None:
    while True:
        payload, (host, port) = await tunnel.recvfrom()
        if client:
            await relay.sendto(b"\0\0\0" + encode_address(host, port) + payload, client[0])
