"""Configuration changes, whatever their source, applied by one function.

A `DeviceChange` is what a UAPI `set` request says (wgpy.uapi.protocol
parses one), and what `wgpy up` files, the embedding API and a peer
registry produce: validated before anything changes, then applied by
`apply`, all or nothing.

- Meaning, as in wireguard-go: device keys come first; an all-zero private or
  preshared key removes the key; a peer block with the device's own public
  key is ignored; `update_only` does not create an absent peer; `remove`
  removes the peer (the block's other lines are then ignored);
  `replace_allowed_ips` and the allowed-IP additions and removals apply in
  order, a prefix moving from its current owner when added. An endpoint
  address forgets the names behind the peer's endpoint; names given with it
  (wgpy's extension) are kept, the address being where to start.
- All or nothing: the only steps that can fail, the fwmark and the listen
  port, come first and are undone together; the rest cannot fail once
  validated. Applying is shielded from cancellation: it is never abandoned
  half-way.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from wgpy._core import PresharedKey, PrivateKey, PublicKey
from wgpy.peer import IPNetwork, Peer


class ChangeError(Exception):
    """A change is invalid or cannot be applied; `code` is the positive errno
    a UAPI reply reports for it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> ChangeError:
    return ChangeError(errno.EINVAL, message)


AllowedIPAction = Literal["add", "remove", "replace"]
# ("add" | "remove", canonical address text, prefix length), or ("replace", "", 0).
AllowedIPOp = tuple[AllowedIPAction, str, int]


@dataclass
class PeerChange:
    """One peer's part of a change, validated."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    clear_preshared_key: bool = False
    endpoint: tuple[str, int] | None = None
    # wgpy's extension (wgpy.names): the names or candidates behind the
    # endpoint; None: unchanged, unless `endpoint` is set (that forgets them).
    endpoint_names: list[tuple[str, int]] | None = None
    persistent_keepalive: int | None = None
    allowed_ips: list[AllowedIPOp] = field(default_factory=list)


@dataclass
class DeviceChange:
    """A whole change, validated; None/False fields leave things as they are."""

    private_key: PrivateKey | None = None
    remove_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


class Configurable(Protocol):
    """What applying a change needs of a device (wgpy.device.Device; the
    tests' stand-in in tests/uapi_fakes.py)."""

    @property
    def peers(self) -> Sequence[Peer]: ...

    @property
    def public_key(self) -> PublicKey | None: ...

    @property
    def fwmark(self) -> int: ...

    def peer(self, public_key: PublicKey) -> Peer: ...

    def set_fwmark(self, fwmark: int) -> None: ...

    def set_listen_port(self, port: int) -> None: ...

    def set_private_key(self, key: PrivateKey | None) -> None: ...

    async def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int = 0,
    ) -> Peer: ...

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: tuple[str, int] | None = None,
        replace_allowed_ips: bool = False,
        persistent_keepalive: int | None = None,
    ) -> Peer: ...

    def remove_peer(self, public_key: PublicKey) -> None: ...

    def clear_preshared_key(self, public_key: PublicKey) -> None: ...

    def set_endpoint_names(self, public_key: PublicKey, names: list[tuple[str, int]]) -> None: ...

    def add_allowed_ip_prefixes(self, peer: Peer, prefixes: Iterable[tuple[str, int]]) -> None: ...

    def remove_allowed_ip(self, peer: Peer, network: IPNetwork) -> bool: ...


async def apply(device: Configurable, change: DeviceChange) -> None:
    """Applies a validated change. Raises ChangeError(EADDRINUSE), having
    changed nothing, if the fwmark or listen port cannot be applied; every
    later step cannot fail."""
    with trio.CancelScope(shield=True):
        _apply_socket_settings(device, change)
        if change.replace_peers:
            for peer in device.peers:
                device.remove_peer(peer.public_key)
        if change.private_key is not None or change.remove_private_key:
            device.set_private_key(change.private_key)
        own_key = device.public_key
        for peer_change in change.peers:
            key = peer_change.public_key
            if own_key is not None and key == own_key:
                continue  # wireguard-go's "dummy" peer: never created
            if peer_change.remove:
                device.remove_peer(key)
            elif _has_peer(device, key):
                _update_peer(device, peer_change)
            elif not peer_change.update_only:
                await _create_peer(device, peer_change)


def _apply_socket_settings(device: Configurable, request: DeviceChange) -> None:
    """The fwmark, then the listen port (binding may fail: EADDRINUSE); a
    failure restores the old fwmark, so nothing has changed."""
    old_fwmark = device.fwmark
    if request.fwmark is not None and request.fwmark != old_fwmark:
        try:
            device.set_fwmark(request.fwmark)
        except OSError as e:
            _restore_fwmark(device, old_fwmark)  # it may have changed some sockets
            raise ChangeError(errno.EADDRINUSE, f"cannot set fwmark: {e}") from None
    if request.listen_port is not None:
        try:
            device.set_listen_port(request.listen_port)
        except OSError as e:
            if device.fwmark != old_fwmark:
                _restore_fwmark(device, old_fwmark)
            message = f"cannot listen on port {request.listen_port}: {e.strerror or e}"
            if e.errno == errno.EACCES:
                # A daemon that dropped its privileges (wgpy.privileges).
                message += " (without CAP_NET_BIND_SERVICE: start the daemon with --listen-port)"
            raise ChangeError(errno.EADDRINUSE, message) from None


def _restore_fwmark(device: Configurable, fwmark: int) -> None:
    with contextlib.suppress(OSError):
        device.set_fwmark(fwmark)


def _has_peer(device: Configurable, key: PublicKey) -> bool:
    try:
        device.peer(key)
    except KeyError:
        return False
    return True


async def _create_peer(device: Configurable, change: PeerChange) -> None:
    peer = await device.add_peer(
        change.public_key,
        preshared_key=change.preshared_key,
        endpoint=change.endpoint,
        persistent_keepalive=change.persistent_keepalive or 0,
    )
    _apply_allowed_ips(device, peer, change.allowed_ips)
    _apply_names(device, change)


def _apply_names(device: Configurable, change: PeerChange) -> None:
    if change.endpoint_names is not None:
        device.set_endpoint_names(change.public_key, change.endpoint_names)


def _update_peer(device: Configurable, change: PeerChange) -> None:
    if change.clear_preshared_key:
        device.clear_preshared_key(change.public_key)
    peer = device.update_peer(
        change.public_key,
        preshared_key=change.preshared_key,
        endpoint=change.endpoint,
        persistent_keepalive=change.persistent_keepalive,
    )
    _apply_allowed_ips(device, peer, change.allowed_ips)
    _apply_names(device, change)


def _apply_allowed_ips(device: Configurable, peer: Peer, ops: list[AllowedIPOp]) -> None:
    """In order, since a prefix belongs to one peer at a time: adding one
    takes it from its current owner. Runs of additions go in one call."""
    additions: list[tuple[str, int]] = []
    for action, address, cidr in ops:
        if action == "add":
            additions.append((address, cidr))
            continue
        if additions:
            device.add_allowed_ip_prefixes(peer, additions)
            additions = []
        if action == "replace":
            device.update_peer(peer.public_key, replace_allowed_ips=True)
        else:
            device.remove_allowed_ip(peer, ipaddress.ip_network(f"{address}/{cidr}", strict=False))
    if additions:
        device.add_allowed_ip_prefixes(peer, additions)
