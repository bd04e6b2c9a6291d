"""Route, address and link queries and notifications over rtnetlink, awaited on Trio.

- pyroute2 encodes and parses the messages; the sockets are non-blocking and
  read when Trio says they are readable, so no query blocks the event loop,
  and nothing here builds a heavy object per query (no IPRoute per call).
- `Netlink`: request/answer queries (the route to an address, neighbour
  entries, local addresses, one link).
- `open_monitor`/`drain_news`: a socket subscribed to notifications, and
  what a burst of them was about; an overflow (news lost) reads as
  "overflow", after which everything must be looked at again.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import trio
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELNEIGH,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

NETLINK_BUFFER = 1 << 20
_NLMSG_HEADER = struct.Struct("=IHHII")
_NEWS = {
    16: "link",
    17: "link gone",
    20: "address",
    21: "address gone",
    24: "route",
    25: "route gone",
}


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


def describe(path: Path | None) -> str:
    return path.describe() if path is not None else "no route"


@dataclass(frozen=True)
class Link:
    """What a link message says about an interface."""

    index: int
    name: str | None
    mtu: int | None
    gone: bool = False


def parse_links(data: bytes, marshal: MarshalRtnl) -> list[Link]:
    """The link messages (RTM_NEWLINK, RTM_DELLINK) among netlink messages."""
    links = []
    for msg in marshal.parse(data):
        kind = msg["header"]["type"]
        if kind not in (16, 17):
            continue
        mtu = msg.get_attr("IFLA_MTU")
        links.append(
            Link(
                int(msg["index"]),
                msg.get_attr("IFLA_IFNAME"),
                int(mtu) if mtu is not None else None,
                gone=kind == 17,
            )
        )
    return links


class Netlink:
    """Queries over one rtnetlink socket, in the namespace it was made in."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
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

    async def link(self, index: int | None = None, name: str | None = None) -> Link | None:
        """The link of that index or name, or None if there is none."""
        msg = ifinfmsg()
        msg["index"] = index or 0
        if name is not None:
            msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            replies = await self._request(msg, RTM_GETLINK, NLM_F_REQUEST)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return None
            raise
        if not replies:
            return None
        r = replies[0]
        mtu = r.get_attr("IFLA_MTU")
        return Link(int(r["index"]), r.get_attr("IFLA_IFNAME"), int(mtu) if mtu else None)

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


def open_monitor(groups: int, sock: socket.socket | None = None) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to `groups` (RTMGRP_* bits)."""
    sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_BUFFER)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def read_pending(sock: socket.socket) -> tuple[list[bytes], bool]:
    """Every pending datagram, and whether some were lost (ENOBUFS)."""
    datagrams: list[bytes] = []
    overflow = False
    while True:
        try:
            datagrams.append(sock.recv(65536))
        except BlockingIOError:
            return datagrams, overflow
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            overflow = True


def news_of(data: bytes) -> list[str]:
    """What the notifications in one datagram were about."""
    news: list[str] = []
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            break
        news.append(_NEWS.get(kind, f"type {kind}"))
        offset += (length + 3) & ~3
    return news


def drain_news(sock: socket.socket) -> list[str]:
    """Reads every pending notification; returns what they were about.
    An overflow (ENOBUFS: news were lost) reads as "overflow"."""
    datagrams, overflow = read_pending(sock)
    news = ["overflow"] if overflow else []
    for data in datagrams:
        news += news_of(data)
    return news
