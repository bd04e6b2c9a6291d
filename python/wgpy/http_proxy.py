"""An HTTP proxy into the tunnel: CONNECT tunnels (RFC 9110 §9.3.6), and
plain requests in absolute form (`GET http://host:port/path`), passed on
in origin form with `Connection: close` (so one connection carries one
request: a next one may be for another host). Anything the client sent
after the request head is passed on as is.
"""

from __future__ import annotations

import logging

import trio

from wgpy.proxy_io import REQUEST_TIMEOUT, _Closed, failure_kind
from wgpy.userspace import UserspaceDevice

log = logging.getLogger("wgpy")

MAX_HEAD = 16 * 1024
STATUS_OF = {"timeout": b"504 Gateway Timeout", "unreachable": b"502 Bad Gateway"}
HOP_BY_HOP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


async def read_head(sock: trio.socket.SocketType) -> tuple[bytes, bytes]:
    """(the request head up to its blank line, what followed it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            await respond(sock, b"431 Request Header Fields Too Large")
            raise _Closed
        chunk = await sock.recv(4096)
        if not chunk:
            raise _Closed
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def respond(sock: trio.socket.SocketType, status: bytes, detail: str = "") -> None:
    body = detail.encode() + b"\n" if detail else b""
    headers = b"Content-Length: %d\r\nConnection: close\r\n" % len(body)
    await sock.send(b"HTTP/1.1 " + status + b"\r\n" + headers + b"\r\n" + body)


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    host, sep, port = authority.rpartition(":")
    if not sep or "]" in port:
        host, port = authority, str(default_port)
    return host.strip("[]"), int(port)


def origin_form(head: bytes) -> tuple[str, int, bytes]:
    """(host, port, the head rewritten for the origin server) of a request
    in absolute form."""
    request_line, *header_lines = head.split(b"\r\n")
    method, target, version = request_line.split(b" ", 2)
    text = target.decode("ascii")
    if not text.lower().startswith("http://"):
        raise ValueError("only http:// URLs (use CONNECT for anything else)")
    authority, slash, path = text[7:].partition("/")
    host, port = split_authority(authority, 80)
    kept = [h for h in header_lines if h.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP]
    lines = [
        b" ".join((method, ("/" + path if slash else "/").encode(), version)),
        *kept,
        b"Connection: close",
    ]
    return host, port, b"\r\n".join(lines) + b"\r\n\r\n"


async def handle(device: UserspaceDevice, sock: trio.socket.SocketType) -> None:
    with trio.fail_after(REQUEST_TIMEOUT):
        head, rest = await read_head(sock)
    try:
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method == b"CONNECT":
            host, port = split_authority(target.decode("ascii"), 443)
            prefix = rest
        else:
            host, port, rewritten = origin_form(head)
            prefix = rewritten + rest
    except (ValueError, UnicodeDecodeError) as e:
        await respond(sock, b"400 Bad Request", str(e))
        return
    try:
        id_, _ = await device.connect_tcp(host, port)
    except OSError as e:
        log.info("HTTP %s %s:%d: %s", method.decode(errors="replace"), host, port, e)
        await respond(sock, STATUS_OF.get(failure_kind(e), b"502 Bad Gateway"), str(e))
        return
    if method == b"CONNECT":
        await sock.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
    device.netstack.attach(id_, sock.fileno(), prefix)
