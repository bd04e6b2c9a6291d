"""Name resolution through the tunnel: A and AAAA queries over UDP to the
configuration's `DNS` servers, sent from a port of the userspace stack.

- Only what a stub resolver needs (RFC 1035 §4): one question per query,
  recursion desired, answers of the asked type collected (the server
  resolves CNAME chains and includes their targets' records).
- Each server is tried in order with a short timeout and one retry; the
  first that answers decides (NXDOMAIN is final, like getaddrinfo).
- Malformed answers are ignored, as if lost: never an exception from
  another host's bytes beyond `socket.gaierror`.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct

import trio

from wgpy.tunnel_udp import TunnelUdpSocket

A, AAAA = 1, 28
TIMEOUT = 2.0
TRIES = 2
NXDOMAIN = 3


class _Malformed(Exception):
    pass


def encode_query(query_id: int, name: str, qtype: int) -> bytes:
    labels = name.rstrip(".").encode("idna").split(b".")
    if any(not label or len(label) > 63 for label in labels):
        raise socket.gaierror(socket.EAI_NONAME, f"invalid name {name!r}")
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return (
        struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)
    )


def _skip_name(msg: bytes, pos: int) -> int:
    for _ in range(128):
        if pos >= len(msg):
            raise _Malformed
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos
    raise _Malformed


def parse_answer(msg: bytes, query_id: int, qtype: int) -> tuple[int, list[str]]:
    """(rcode, addresses of type `qtype`) of a response to `query_id`."""
    if len(msg) < 12:
        raise _Malformed
    rid, flags, qdcount, ancount = struct.unpack("!HHHH", msg[:8])
    if rid != query_id or not flags & 0x8000:
        raise _Malformed
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(msg, pos) + 4
    found: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(msg, pos)
        if pos + 10 > len(msg):
            raise _Malformed
        rtype, _, _, rdlength = struct.unpack("!HHIH", msg[pos : pos + 10])
        rdata = msg[pos + 10 : pos + 10 + rdlength]
        pos += 10 + rdlength
        if rtype == qtype == A and len(rdata) == 4:
            found.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == qtype == AAAA and len(rdata) == 16:
            found.append(str(ipaddress.IPv6Address(rdata)))
    return flags & 0xF, found


async def _ask(
    sock: TunnelUdpSocket, server: str, name: str, qtype: int
) -> tuple[int, list[str]] | None:
    """One server's answer for one type, or None if it never came."""
    for _ in range(TRIES):
        query_id = secrets.randbits(16)
        await sock.sendto(encode_query(query_id, name, qtype), (server, 53))
        with trio.move_on_after(TIMEOUT):
            while True:
                data, (host, port) = await sock.recvfrom()
                if port != 53 or ipaddress.ip_address(host) != ipaddress.ip_address(server):
                    continue
                try:
                    return parse_answer(data, query_id, qtype)
                except _Malformed:
                    continue
    return None


async def resolve(
    sock: TunnelUdpSocket, servers: list[str], name: str, qtypes: list[int]
) -> list[str]:
    """The addresses of `name` (types in `qtypes` order), from the first server that answers."""
    if not servers:
        raise socket.gaierror(
            socket.EAI_FAIL, f"cannot resolve {name!r}: the configuration has no DNS server"
        )
    for server in servers:
        answers: list[str] = []
        answered = False
        for qtype in qtypes:
            result = await _ask(sock, server, name, qtype)
            if result is None:
                continue
            answered = True
            rcode, found = result
            if rcode == NXDOMAIN:
                raise socket.gaierror(
                    socket.EAI_NONAME, f"{name!r}: no such name (DNS server {server})"
                )
            answers += found
        if answers:
            return answers
        if answered:
            raise socket.gaierror(
                socket.EAI_NODATA, f"{name!r} has no address (DNS server {server})"
            )
    raise socket.gaierror(
        socket.EAI_AGAIN,
        f"cannot resolve {name!r}: no answer from {', '.join(servers)} through the tunnel",
    )
