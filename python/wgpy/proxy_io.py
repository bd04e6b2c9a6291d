"""Shared by the proxies (wgpy.socks5, wgpy.http_proxy): exact reads of a
client's request, listening sockets, one task per client with a deadline
for its request, and what kind of failure a connection error is.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from wgpy.rootless import bind_family
from wgpy.userspace import UserspaceDevice

log = logging.getLogger("wgpy")

REQUEST_TIMEOUT = 30.0
MAX_HTTP_HEAD = 16 * 1024


class _Closed(Exception):
    """The client went away or sent something that is not the protocol."""


async def read_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await sock.recv(n - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return data


async def listen(address: tuple[str, int]) -> trio.socket.SocketType:
    sock = trio.socket.socket(bind_family(address[0]), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(address)
    sock.listen(1024)
    return sock


Handler = Callable[[UserspaceDevice, trio.socket.SocketType], Awaitable[None]]


async def accept_loop(
    listener: trio.socket.SocketType, handle: Handler, device: UserspaceDevice
) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            client, _ = await listener.accept()
            nursery.start_soon(_serve_client, handle, device, client)


async def _serve_client(
    handle: Handler, device: UserspaceDevice, client: trio.socket.SocketType
) -> None:
    with client:
        try:
            await handle(device, client)
        except (_Closed, OSError, trio.TooSlowError, ValueError) as e:
            log.debug("client dropped: %r", e)  # its problem; the others are served on
        except Exception:
            # A bug here must not take the proxy down: log it, serve the others.
            log.exception("serving a client failed")


def failure_kind(error: BaseException) -> str:
    """refused, unreachable (no route, no name) or timeout."""
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, socket.gaierror) or getattr(error, "errno", None) == errno.ENETUNREACH:
        return "unreachable"
    return "failed"
