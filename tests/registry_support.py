"""Shared pieces of the registry tests: a fake device the sync can drive
in-process, and helpers to write to etcd as `wgpy registry` or as a careless
other tool would."""

from __future__ import annotations

import base64
from collections.abc import Callable

import trio
from uapi_fakes import FakeDevice
from wgpy import PrivateKey, PublicKey
from wgpy.registry.etcd import EtcdClient
from wgpy.registry.layout import PeerEntry, entry_from_dict

NETWORK = "testnet"


class RegistryFakeDevice(FakeDevice):
    """uapi_fakes.FakeDevice and the one more method the registry sync uses."""

    def allowed_ip_prefixes(self, public_key: PublicKey) -> list[tuple[str, int]]:
        return [
            (str(n.network_address), n.prefixlen) for n, k in self.owner.items() if k == public_key
        ]

    def state(self) -> dict[str, list[str]]:
        """Public key -> sorted allowed IPs, for comparing with the registry."""
        return {k.to_base64(): sorted(self.prefixes(k)) for k in self.peers_by_key}


def new_key() -> PublicKey:
    return PrivateKey.generate().public_key()


def entry(key: PublicKey, *ips: str, **extra: object) -> PeerEntry:
    return entry_from_dict({"public_key": key.to_base64(), "allowed_ips": list(ips), **extra})


def expected(entries: list[PeerEntry]) -> dict[str, list[str]]:
    return {e.public_key.to_base64(): sorted(f"{a}/{n}" for a, n in e.allowed_ips) for e in entries}


async def raw_put(client: EtcdClient, key: str, value: bytes | str) -> None:
    """What another tool might write, bypassing every check."""
    data = value.encode() if isinstance(value, str) else value
    await client.post(
        "/v3/kv/put",
        {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(data).decode()},
    )


async def until(predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Polls `predicate` inside Trio; returns the seconds it took."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return trio.current_time() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
