"""The TUN interface's MTU, followed from link notifications, never polled.

- The data plane pads packets up to the interface's MTU and never past it,
  so it must know the MTU: it is set when the device starts and by
  `Device.set_mtu`, and followed from RTM_NEWLINK notifications when anyone
  else changes it (`ip link set ... mtu`, wg-quick).
- The interface may be moved to another network namespace after the device
  started (the "ready for containers" model); its link then leaves ours.
  The TUN device tells which namespace it is in now (TUNGETDEVNETNS), and
  the follower moves its socket there (setns, which needs CAP_SYS_ADMIN;
  without it, the move is logged and the MTU last seen stays).
- One netlink socket subscribed to link news and one for queries; nothing
  is built per notification, so memory stays flat however long it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator

import trio
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from wgpy._core import Datapath
from wgpy.netlink import Link, Netlink, open_monitor, parse_links, read_pending

log = logging.getLogger("wgpy")

TUNGETIFF = 0x800454D2
TUNGETDEVNETNS = 0x54E3
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16


class _Watch:
    """A link-news socket and a query socket in one namespace."""

    def __init__(self, monitor: socket.socket, query: socket.socket) -> None:
        self.monitor = open_monitor(RTMGRP_LINK, monitor)
        self.netlink = Netlink(query)
        self.marshal = MarshalRtnl()

    def close(self) -> None:
        self.monitor.close()
        self.netlink.close()


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def _here() -> _Watch:
    monitor = _netlink_socket()
    try:
        return _Watch(monitor, _netlink_socket())
    except BaseException:
        monitor.close()
        raise


@functools.cache
def _setns() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    return setns


def _enter(fd: int) -> None:
    if _setns()(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def _entered(netns_fd: int) -> Iterator[None]:
    """This thread in another network namespace for the block (sockets keep theirs)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(netns_fd)
        try:
            yield
        finally:
            _enter(home)  # cannot fail once we could leave: same privileges
    finally:
        os.close(home)


def _where_is(tun_fd: int) -> _Watch | None:
    """A watch in the namespace the TUN interface is in now; None if it is
    gone or we may not follow it there."""
    try:
        netns = fcntl.ioctl(tun_fd, TUNGETDEVNETNS)
    except OSError:
        return None  # deleted, or a kernel without TUNGETDEVNETNS
    try:
        with _entered(netns):
            return _here()
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.EPERM:
            why += ": entering it needs CAP_SYS_ADMIN, which a daemon run with --user or "
            why += "without root does not keep"
        log.warning("the TUN interface moved to another namespace; its MTU is no longer "
                    "followed there (%s)", why)  # fmt: skip
        return None
    finally:
        os.close(netns)


def tun_name(tun_fd: int) -> str | None:
    """The TUN interface's current name (TUNGETIFF), or None if it is gone."""
    try:
        ifr = fcntl.ioctl(tun_fd, TUNGETIFF, bytes(40))
    except OSError:
        return None
    return struct.unpack_from(f"{IFNAMSIZ}s", ifr)[0].rstrip(b"\0").decode() or None


async def follow_mtu(
    tun_fd: int, dp: Datapath, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keeps `dp`'s MTU equal to the TUN interface's until cancelled, or
    until the interface is gone or cannot be followed."""
    watch: _Watch | None = _here()
    task_status.started()
    try:
        while watch is not None:
            await _follow_here(watch, tun_fd, dp)
            watch.close()
            watch = _where_is(tun_fd)
    finally:
        if watch is not None:
            watch.close()


async def _follow_here(watch: _Watch, tun_fd: int, dp: Datapath) -> None:
    """Follows the interface in the watch's namespace until it leaves it."""
    name = tun_name(tun_fd)
    current = await watch.netlink.link(name=name) if name else None
    if current is None:
        return
    _apply(dp, current)
    while True:
        await trio.lowlevel.wait_readable(watch.monitor)
        datagrams, overflow = read_pending(watch.monitor)
        if overflow:  # news were lost: ask again
            found = await watch.netlink.link(index=current.index)
            if found is None:
                return
            _apply(dp, found)
        for data in datagrams:
            for link in parse_links(data, watch.marshal):
                if link.index != current.index:
                    continue
                if link.gone:
                    return
                _apply(dp, link)


def _apply(dp: Datapath, link: Link) -> None:
    if link.mtu is not None and link.mtu != dp.mtu:
        log.debug("%s: MTU %d", link.name, link.mtu)
        dp.set_mtu(link.mtu)
