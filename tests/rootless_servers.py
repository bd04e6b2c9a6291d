"""Servers for the rootless tests, run on the far side of a tunnel:

- `dns ADDR NAME=IP...`: answers A queries for the given names on ADDR:53
  (NXDOMAIN for others): a stand-in for the far side's DNS server.
- `echo ADDR:PORT`: a TCP echo server for many concurrent connections.

Each prints "ready" once bound.
"""

from __future__ import annotations

import socket
import struct
import sys

import trio


def dns_answer(query: bytes, names: dict[str, str]) -> bytes | None:
    if len(query) < 17:
        return None
    pos, labels = 12, []
    while pos < len(query) and query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode())
        pos += 1 + query[pos]
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    question = query[12 : pos + 5]
    address = names.get(".".join(labels).lower())
    if address is None:
        return query[:2] + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
    answers = b""
    if qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    count = 1 if answers else 0
    return query[:2] + struct.pack("!HHHHH", 0x8180, 1, count, 0, 0) + question + answers


async def dns(bind: str, names: dict[str, str]) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((bind, 53))
    print("ready", flush=True)
    while True:
        query, source = await sock.recvfrom(2048)
        answer = dns_answer(query, names)
        if answer:
            await sock.sendto(answer, source)


async def echo(bind: str) -> None:
    host, _, port = bind.rpartition(":")

    async def handler(stream: trio.SocketStream) -> None:
        try:
            async for chunk in stream:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(int(port), host=host, backlog=4096)
    print("ready", flush=True)
    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    kind, where, *rest = sys.argv[1:]
    if kind == "dns":
        trio.run(dns, where, dict(item.split("=", 1) for item in rest))
    else:
        trio.run(echo, where)
