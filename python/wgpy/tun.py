"""The TUN device and the UDP sockets a wgpy device runs on.

- The TUN interface is created with the TUNSETIFF ioctl (IFF_TUN | IFF_NO_PI)
  and lives as long as its file descriptor; closing it deletes the link.
- Link, address and route changes go through rtnetlink (pyroute2).
- One UDP port serves IPv4 and IPv6: two sockets (the kernel and
  wireguard-go do the same) bound to the same port, IPV6_V6ONLY on the v6 one,
  7 MiB buffers like wireguard-go, and SO_MARK when a fwmark is set.
- With several data-plane lanes (wgpy._core.data_plane_queues(), see
  rust/src/datapath/lanes.rs) the TUN device is multi-queue (the data plane
  opens the further queues itself) and each family gets one socket per lane,
  an SO_REUSEPORT group: the first is bound without SO_REUSEPORT, so a port
  in use is refused as usual, and joins the group once bound.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TCP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# WGPY_TUN_OFFLOAD=0 turns the TUN offloads off (for comparisons).
OFFLOAD_ENV = "WGPY_TUN_OFFLOAD"
IFNAMSIZ = 16
DEFAULT_MTU = 1420
SOCKET_BUFFER = 7 << 20
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_MARK = 36
IFA_F_NODAD = 0x02

log = logging.getLogger("wgpy")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TunError(OSError):
    """The TUN device could not be created or configured."""


def valid_interface_name(name: str) -> bool:
    """Linux's rule (dev_valid_name): 1-15 bytes, no '/', ':' or whitespace, not '.'/'..'."""
    raw = name.encode()
    return (
        0 < len(raw) < IFNAMSIZ
        and name not in (".", "..")
        and not any(c in name for c in "/:")
        and not any(c.isspace() for c in name)
    )


def _set_offloads(fd: int, name: str) -> bool:
    """Asks for TCP and UDP segmentation offload; returns whether UDP's was
    accepted. Still correct with neither: the kernel then hands over
    MTU-sized packets and takes them one by one."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TCP_OFFLOADS | TUN_F_USO4 | TUN_F_USO6)
        return True
    except OSError as e:
        log.info("%s: UDP segmentation offload refused (%s); TCP only", name, e)
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TCP_OFFLOADS)
    except OSError as e:
        log.info("%s: TUN offloads refused (%s); reading packets one by one", name, e)
    return False


@dataclass
class Tun:
    """An open TUN interface; `fd` is what the data plane reads and writes."""

    name: str
    fd: int
    index: int
    # Reads and writes carry a virtio-net header; reads may be TSO packets.
    vnet_hdr: bool = False
    # The kernel also takes and gives UDP GSO packets (Linux >= 6.2).
    udp_offload: bool = False
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, name: str, mtu: int = DEFAULT_MTU, queues: int = 1) -> Tun:
        if not valid_interface_name(name):
            raise TunError(errno.EINVAL, f"invalid interface name {name!r}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(e.errno, f"cannot open /dev/net/tun: {e.strerror}") from None
        offload = os.environ.get(OFFLOAD_ENV, "1") != "0"
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        if queues > 1:
            flags |= IFF_MULTI_QUEUE
        try:
            ifr = struct.pack("16sH22x", name.encode(), flags)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                raise TunError(
                    e.errno, "creating a TUN device needs CAP_NET_ADMIN (run as root)"
                ) from None
            if e.errno == errno.EBUSY:
                raise TunError(e.errno, f"interface {name} already exists") from None
            raise TunError(e.errno, f"cannot create TUN device {name}: {e.strerror}") from None
        actual = res[:IFNAMSIZ].rstrip(b"\0").decode()
        udp_offload = offload and _set_offloads(fd, actual)
        try:
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=actual)[0]
                ipr.link("set", index=index, mtu=mtu)
        except Exception:
            os.close(fd)
            raise
        return cls(name=actual, fd=fd, index=index, vnet_hdr=offload, udp_offload=udp_offload)

    def set_up(self) -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=self.index, state="up")

    def set_mtu(self, mtu: int) -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=self.index, mtu=mtu)

    def mtu(self) -> int | None:
        """The interface's MTU, or None once it has left this namespace."""
        try:
            with IPRoute() as ipr:
                links = ipr.get_links(self.index)
        except Exception:
            return None
        # The index may now belong to another link of this namespace.
        if not links or links[0].get_attr("IFLA_IFNAME") != self.name:
            return None
        value = links[0].get_attr("IFLA_MTU")
        return int(value) if value is not None else None

    def add_address(self, address: IPInterface) -> None:
        with IPRoute() as ipr:
            kwargs: dict[str, object] = {}
            if address.version == 6:
                # IFA_F_NODAD: a tunnel address has no link to duplicate it
                # on, and DAD would hold it "tentative" for a second.
                kwargs["flags"] = IFA_F_NODAD
            ipr.addr(
                "add",
                index=self.index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                **kwargs,
            )

    def add_route(self, network: IPNetwork, table: int | None = None) -> None:
        with IPRoute() as ipr:
            kwargs: dict[str, object] = {"dst": str(network), "oif": self.index}
            if table is not None:
                kwargs["table"] = table
            ipr.route("replace", **kwargs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


def _tune(sock: socket.socket, fwmark: int) -> None:
    for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)
    if fwmark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)


def set_fwmark(sockets: list[socket.socket], fwmark: int) -> None:
    for s in sockets:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)


def open_udp_sockets(port: int, fwmark: int = 0, count: int = 1) -> list[socket.socket]:
    """Binds `count` IPv4 and (if the host has IPv6) as many IPv6 sockets to
    one port, returned in lane order: [v4, v6, v4, v6, ...] (or only v4s).

    With port 0 the kernel picks the IPv4 port and the IPv6 socket takes the
    same; if that port is taken for IPv6 the pair is retried.
    """
    last_error: OSError | None = None
    for _ in range(10):
        v4 = _bound(socket.AF_INET, "0.0.0.0", port, fwmark, count)
        chosen = v4[0].getsockname()[1]
        try:
            v6 = _bound(socket.AF_INET6, "::", chosen, fwmark, count)
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return v4  # no IPv6 here
            for s in v4:
                s.close()
            if port == 0 and e.errno == errno.EADDRINUSE:
                last_error = e
                continue
            raise
        return [s for pair in zip(v4, v6, strict=True) for s in pair]
    assert last_error is not None
    raise last_error


def _bound(
    family: socket.AddressFamily, host: str, port: int, fwmark: int, count: int
) -> list[socket.socket]:
    """`count` sockets of `family` bound to `port`, an SO_REUSEPORT group
    when more than one."""
    sockets: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(s)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _tune(s, fwmark)
            if i > 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            if i == 0 and count > 1:
                # Bound alone first: a port another program holds is refused.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                port = s.getsockname()[1]
    except OSError:
        for s in sockets:
            s.close()
        raise
    return sockets
