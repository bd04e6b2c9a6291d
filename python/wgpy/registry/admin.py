"""Writing and reading a network's peers, as `wgpy registry` does.

- A peer is written with its allowed-IP claims in one etcd transaction
  that holds only if nothing it read has changed: the peer's key has the
  mod revision read (or is absent), each new claim `ips/P` is absent, each
  claim it keeps or releases still names this peer. Two writers giving one
  allowed IP to two peers: one transaction fails, re-reads, and finds the
  IP taken (AdminError naming the owner). A lost race on the same peer is
  retried, at most MAX_ATTEMPTS times.
- Writing an existing peer replaces its entry; claims it no longer needs
  are deleted in the same transaction. Removing a peer deletes its entry
  and the claims that name it.
- A bulk import reads the network once and writes peers concurrently (one
  transaction each, so one conflict refuses that peer only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from wgpy._core import PublicKey
from wgpy.registry.etcd import JSON, EtcdClient, absent, delete, mod_revision_is, put, value_is
from wgpy.registry.layout import (
    CLAIMS,
    EntryError,
    PeerEntry,
    Prefix,
    claim_key,
    decode_entry,
    network_prefix,
    peer_key,
    prefix_text,
)
from wgpy.registry.view import KeyValue, RegistryView

MAX_ATTEMPTS = 8
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
IMPORT_CONCURRENCY = 16


class AdminError(Exception):
    """A write the registry refuses (conflict, no such peer, ...): one line."""


@dataclass(frozen=True)
class Listing:
    entries: list[PeerEntry]
    problems: list[tuple[str, str]]  # (key name or claim, why gateways refuse it)


class Reads:
    """Key-values already read (a snapshot), or reads from etcd one by one."""

    def __init__(self, client: EtcdClient, known: dict[bytes, KeyValue] | None = None) -> None:
        self._client = client
        self._known = known

    async def get(self, key: str) -> KeyValue | None:
        if self._known is not None:
            return self._known.get(key.encode())
        return await self._client.get(key.encode())


class RegistryAdmin:
    """The write and read operations on one network."""

    def __init__(self, client: EtcdClient, network: str) -> None:
        self.client = client
        self.network = network
        self.prefix = network_prefix(network).encode()

    async def listing(self) -> Listing:
        _, kvs = await self.client.snapshot(self.prefix)
        view = RegistryView(self.network)
        view.load(kvs)
        entries: list[PeerEntry] = []
        problems: list[tuple[str, str]] = []
        for name in sorted(view.names()):
            decision = view.decide(name)
            if decision.entry is not None:
                entries.append(decision.entry)
            else:
                problems.append((name, decision.reason or "refused"))
        for prefix, owner in view.orphan_claims():
            problems.append((f"{CLAIMS}{prefix}", f"claimed by {owner[:60]}, which has no entry"))
        return Listing(entries, problems)

    async def put_peer(self, entry: PeerEntry, reads: Reads | None = None) -> str:
        """Writes `entry`; returns "added", "updated" or "unchanged"."""
        for _ in range(MAX_ATTEMPTS):
            outcome = await self._try_put(entry, reads or Reads(self.client))
            if outcome is not None:
                return outcome
            reads = None  # something changed since the snapshot: read afresh
        raise AdminError(f"peer {entry.public_key.to_base64()}: too many concurrent writes")

    async def _try_put(self, entry: PeerEntry, reads: Reads) -> str | None:
        key = peer_key(self.network, entry.public_key)
        owner = entry.public_key.to_base64().encode()
        old = await reads.get(key)
        old_prefixes = _prefixes_of(key, old)
        value = entry.to_json().encode()
        compare = [mod_revision_is(key.encode(), old.mod_revision) if old else absent(key.encode())]
        success = [put(key.encode(), value)]
        for prefix in entry.allowed_ips:
            ck = claim_key(self.network, prefix).encode()
            claim = await reads.get(ck.decode())
            if claim is None:
                compare.append(absent(ck))
                success.append(put(ck, owner))
            elif claim.value == owner:
                compare.append(value_is(ck, owner))
            else:
                holder = claim.value.decode(errors="replace")[:60]
                raise AdminError(f"allowed IP {prefix_text(prefix)} belongs to peer {holder}")
        success += await self._release(old_prefixes - set(entry.allowed_ips), owner, reads, compare)
        if old is not None and old.value == value and len(success) == 1:
            return "unchanged"  # the same entry, every claim already its own
        if len(compare) > MAX_TXN_OPS:
            raise AdminError(
                f"too many allowed IPs for one transaction (at most {MAX_TXN_OPS // 2})"
            )
        succeeded, _ = await self.client.txn(compare, success)
        if not succeeded:
            return None
        return "updated" if old is not None else "added"

    async def _release(
        self, prefixes: Iterable[Prefix], owner: bytes, reads: Reads, compare: list[JSON]
    ) -> list[JSON]:
        """Deletes of the claims among `prefixes` that still name `owner`."""
        deletes = []
        for prefix in prefixes:
            ck = claim_key(self.network, prefix)
            claim = await reads.get(ck)
            if claim is not None and claim.value == owner:
                compare.append(value_is(ck.encode(), owner))
                deletes.append(delete(ck.encode()))
        return deletes

    async def remove_peer(self, public_key: PublicKey) -> None:
        for _ in range(MAX_ATTEMPTS):
            key = peer_key(self.network, public_key)
            old = await self.client.get(key.encode())
            if old is None:
                raise AdminError(f"no peer {public_key.to_base64()} in network {self.network}")
            owner = public_key.to_base64().encode()
            prefixes = _prefixes_of(key, old) or await self._claimed_by(owner)
            compare = [mod_revision_is(key.encode(), old.mod_revision)]
            success = [delete(key.encode())]
            success += await self._release(prefixes, owner, Reads(self.client), compare)
            succeeded, _ = await self.client.txn(compare, success)
            if succeeded:
                return
        raise AdminError(f"peer {public_key.to_base64()}: too many concurrent writes")

    async def _claimed_by(self, owner: bytes) -> set[Prefix]:
        """A malformed entry's claims: found by their value."""
        claims = (self.prefix.decode() + CLAIMS).encode()
        _, kvs = await self.client.snapshot(claims)
        found = set()
        for kv in kvs:
            if kv.value == owner:
                address, _, length = kv.key[len(claims) :].decode().rpartition("/")
                found.add((address, int(length)))
        return found

    async def import_peers(self, entries: Sequence[PeerEntry]) -> list[str | AdminError]:
        """Writes every entry; per entry its outcome or the error that refused it."""
        _, kvs = await self.client.snapshot(self.prefix)
        reads = Reads(self.client, {kv.key: kv for kv in kvs})
        results: list[str | AdminError] = [""] * len(entries)
        limiter = trio.CapacityLimiter(IMPORT_CONCURRENCY)

        async def one(i: int, entry: PeerEntry) -> None:
            async with limiter:
                try:
                    results[i] = await self.put_peer(entry, reads)
                except AdminError as e:
                    results[i] = e

        async with trio.open_nursery() as nursery:
            for i, entry in enumerate(entries):
                nursery.start_soon(one, i, entry)
        return results


def _prefixes_of(key: str, kv: KeyValue | None) -> set[Prefix]:
    if kv is None:
        return set()
    try:
        return set(decode_entry(key.rsplit("/", 1)[1], kv.value).allowed_ips)
    except EntryError:
        return set()
