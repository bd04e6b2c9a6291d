"""Least privilege for the daemon: Linux capabilities, read and dropped.

The rules:
- Creating a TUN interface needs CAP_NET_ADMIN, not root: the daemon checks
  for that capability (effective), so a non-root user given it (systemd's
  AmbientCapabilities=) runs it.
- Once the TUN interface, the UDP sockets and the UAPI listener are open,
  and before any data-plane thread starts (so every thread inherits the
  result), `drop` keeps only what running needs: CAP_NET_ADMIN (link and
  MTU changes over rtnetlink, SO_MARK for the fwmark, SO_RCVBUFFORCE when
  rebinding, neighbour deletion for handover) and CAP_NET_BIND_SERVICE if
  the listen port is a privileged one. With a user name it also switches
  to that user's uid and gid (no supplementary groups). The bounding set is
  reduced to the same (when CAP_SETPCAP allows), the ambient and
  inheritable sets are cleared (the daemon executes nothing) and
  no_new_privs is set.
- What no longer works after the drop says so in the log where it happens:
  following the TUN interface into another network namespace needs
  CAP_SYS_ADMIN (setns, wgpy.link); binding a privileged port later needs
  CAP_NET_BIND_SERVICE; a socket file in a directory the user cannot write
  is left behind at exit (wg(8) and wgpy treat it as stale).

The syscalls go through libc with ctypes (capget/capset, prctl): no extra
package is needed.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import pwd
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wgpy")

CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
NAMES = {CAP_SETPCAP: "cap_setpcap", CAP_NET_BIND_SERVICE: "cap_net_bind_service",
         CAP_NET_ADMIN: "cap_net_admin", CAP_SYS_ADMIN: "cap_sys_admin"}  # fmt: skip

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


@dataclass(frozen=True)
class Capabilities:
    """The calling thread's capability sets, as bit masks."""

    effective: int
    permitted: int
    inheritable: int

    def has(self, cap: int) -> bool:
        return bool(self.effective >> cap & 1)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return _check(_libc().prctl(option, arg, arg3, 0, 0), f"prctl({option})")


def current() -> Capabilities:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return Capabilities(*(_join(data, name) for name in ("effective", "permitted", "inheritable")))


def _join(data: ctypes.Array[_Data], name: str) -> int:
    return int(getattr(data[0], name)) | int(getattr(data[1], name)) << 32


def _set(caps: int) -> None:
    """Effective = permitted = `caps`; inheritable empty."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        word = caps >> (32 * i) & 0xFFFF_FFFF
        data[i].effective = data[i].permitted = word
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def mask(caps: Iterable[int]) -> int:
    return sum(1 << c for c in set(caps))


def describe(caps: int) -> str:
    names = [NAMES.get(c, f"cap_{c}") for c in range(64) if caps >> c & 1]
    return ",".join(names) or "none"


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _limit_bounding(keep: int) -> None:
    for cap in range(_last_cap() + 1):
        if not keep >> cap & 1 and _prctl(PR_CAPBSET_READ, cap) == 1:
            _prctl(PR_CAPBSET_DROP, cap)


def unprivileged_port_start() -> int:
    """The first port any user may bind (net.ipv4.ip_unprivileged_port_start)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def needed(listen_port: int | None) -> frozenset[int]:
    """What the daemon keeps: CAP_NET_ADMIN, and CAP_NET_BIND_SERVICE for a
    listen port below the unprivileged range."""
    caps = {CAP_NET_ADMIN}
    if listen_port and listen_port < unprivileged_port_start():
        caps.add(CAP_NET_BIND_SERVICE)
    return frozenset(caps)


def user_ids(name: str) -> tuple[int, int]:
    """(uid, gid) of a user; KeyError if there is none."""
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def drop(keep: Collection[int], user: str | None = None) -> None:
    """Keeps only `keep` (those of them the process has) and, with `user`,
    becomes that user. Raises OSError or KeyError (no such user)."""
    ids = user_ids(user) if user is not None else None
    before = current()
    wanted = mask(keep) & before.permitted
    if before.has(CAP_SETPCAP):
        _limit_bounding(wanted)
    if ids is not None:
        uid, gid = ids
        _prctl(PR_SET_KEEPCAPS, 1)  # the permitted set survives the uid change
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _prctl(PR_SET_KEEPCAPS, 0)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _set(wanted)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    who = f"user {user} (uid {os.getuid()})" if user else f"uid {os.getuid()}"
    log.info("running as %s with capabilities: %s", who, describe(wanted))
