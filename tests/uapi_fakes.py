"""A stand-in for the Device methods wgpy.changes and wgpy.uapi use, over
dicts, and helpers to drive them through the UAPI without sockets. The same
rules hold for the real Device in tests/test_uapi.py part 2."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from wgpy import PresharedKey, PrivateKey, PublicKey, changes
from wgpy.changes import ChangeError
from wgpy.names import NamedEndpoint
from wgpy.uapi import server
from wgpy.uapi.protocol import parse_set

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EINVAL, EPROTO, EIO, EADDRINUSE = errno.EINVAL, errno.EPROTO, errno.EIO, errno.EADDRINUSE


def hexkey(key: PublicKey | PrivateKey | PresharedKey) -> str:
    return bytes(key).hex() if isinstance(key, PublicKey) else key.to_bytes().hex()


@dataclass
class FakePeer:
    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    names: list[tuple[str, int]] | None = None


@dataclass
class FakeStats:
    endpoint: tuple[str, int] | None
    last_handshake: float | None
    tx_bytes: int
    rx_bytes: int
    persistent_keepalive: int
    invalid_source_packets: int = 0


@dataclass
class FakeDevice:
    """The Device methods wgpy.uapi uses, over dicts. As in the data plane,
    a prefix belongs to one peer at a time and host bits are masked."""

    private_key: PrivateKey | None = None
    listen_port: int = 51820
    fwmark: int = 0
    busy_ports: set[int] = field(default_factory=set)
    fwmark_error: OSError | None = None
    peers_by_key: dict[PublicKey, FakePeer] = field(default_factory=dict)
    owner: dict[IPNetwork, PublicKey] = field(default_factory=dict)
    last_handshake: float | None = None
    config_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def public_key(self) -> PublicKey | None:
        return self.private_key.public_key() if self.private_key else None

    @property
    def peers(self) -> list[FakePeer]:
        return list(self.peers_by_key.values())

    def peer(self, public_key: PublicKey) -> FakePeer:
        return self.peers_by_key[public_key]

    def set_private_key(self, key: PrivateKey | None) -> None:
        self.private_key = key
        if key is not None:
            self.remove_peer(key.public_key())

    def set_listen_port(self, port: int) -> None:
        if port in self.busy_ports:
            raise OSError(EADDRINUSE, "Address already in use")
        self.listen_port = port or 43210

    def set_fwmark(self, fwmark: int) -> None:
        if self.fwmark_error is not None:
            raise self.fwmark_error
        self.fwmark = fwmark

    async def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int = 0,
    ) -> FakePeer:
        assert public_key not in self.peers_by_key
        peer = FakePeer(public_key, preshared_key, endpoint, persistent_keepalive)
        self.peers_by_key[public_key] = peer
        return peer

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: tuple[str, int] | None = None,
        replace_allowed_ips: bool = False,
        persistent_keepalive: int | None = None,
    ) -> FakePeer:
        peer = self.peers_by_key[public_key]
        if preshared_key is not None:
            peer.preshared_key = preshared_key
        if endpoint is not None:
            peer.endpoint, peer.names = endpoint, None  # an address forgets the names
        if persistent_keepalive is not None:
            peer.persistent_keepalive = persistent_keepalive
        if replace_allowed_ips:
            self.owner = {n: k for n, k in self.owner.items() if k != public_key}
        return peer

    def clear_preshared_key(self, public_key: PublicKey) -> None:
        self.peers_by_key[public_key].preshared_key = None

    def add_allowed_ip_prefixes(self, peer: FakePeer, prefixes: list[tuple[str, int]]) -> None:
        for address, cidr in prefixes:
            net = ipaddress.ip_network(f"{address}/{cidr}", strict=False)
            self.owner.pop(net, None)
            self.owner[net] = peer.public_key

    def remove_allowed_ip(self, peer: FakePeer, network: IPNetwork) -> bool:
        if self.owner.get(network) != peer.public_key:
            return False
        del self.owner[network]
        return True

    def remove_peer(self, public_key: PublicKey) -> None:
        if self.peers_by_key.pop(public_key, None) is not None:
            self.owner = {n: k for n, k in self.owner.items() if k != public_key}

    def prefixes(self, public_key: PublicKey) -> list[str]:
        return [str(n) for n, k in self.owner.items() if k == public_key]

    def uapi_stats(self) -> list[tuple[FakePeer, FakeStats, list[tuple[str, int]]]]:
        return [
            (
                p,
                FakeStats(p.endpoint, self.last_handshake, 1000, 2000, p.persistent_keepalive),
                [(str(n.network_address), n.prefixlen) for n, k in self.owner.items() if k == key],
            )
            for key, p in self.peers_by_key.items()
        ]

    def set_endpoint_names(self, public_key: PublicKey, names: list[tuple[str, int]]) -> None:
        self.peers_by_key[public_key].names = names

    def endpoint_names(self, public_key: PublicKey) -> NamedEndpoint | None:
        names = self.peers_by_key[public_key].names
        return NamedEndpoint(names) if names is not None else None

    def handover_report(self) -> None:
        return None  # nothing to report: no wgpy_handover keys in the reply

    def uapi_counters(self) -> list[tuple[str, int]]:
        return []  # no wgpy_stat_* keys in the reply

    def registry_report(self) -> None:
        return None  # no registry: no wgpy_registry keys in the reply

    def snapshot(self) -> object:
        return (
            hexkey(self.private_key) if self.private_key else None,
            self.listen_port,
            self.fwmark,
            [
                (hexkey(k), p.preshared_key and hexkey(p.preshared_key), p.endpoint)
                for k, p in self.peers_by_key.items()
            ],
            [p.persistent_keepalive for p in self.peers_by_key.values()],
            [(str(n), hexkey(k)) for n, k in self.owner.items()],
        )


def new_key() -> PublicKey:
    return PrivateKey.generate().public_key()


def exchange(device: object, data: bytes) -> bytes:
    """Everything one connection answers to `data` (then EOF), without sockets."""

    async def main() -> bytes:
        client, served = trio.testing.memory_stream_pair()
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, device, served, trio.Lock())
            await client.send_all(data)
            await client.send_eof()
            while chunk := await client.receive_some():
                received += chunk
        return bytes(received)

    return trio.run(main)


def set_request(device: object, *lines: str) -> bytes:
    return exchange(device, ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode())


def apply(device: object, *lines: str) -> None:
    trio.run(changes.apply, device, parse_set("".join(f"{line}\n" for line in lines)))


def parse_error(*lines: str) -> int:
    with pytest.raises(ChangeError) as info:
        parse_set("".join(f"{line}\n" for line in lines))
    return info.value.code


PEER = "public_key=" + "ab" * 32
