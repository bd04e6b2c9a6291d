"""What the registry says about each peer, from its keys alone (sans I/O).

- The view holds the network's `peers/` entries and `ips/` claims as etcd
  last reported them (a snapshot, then watch events in revision order).
- An entry is accepted when it is well formed (wgpy.registry.layout) and
  every one of its allowed IPs is claimed for it (`ips/P` names its public
  key); otherwise it is refused, with the reason. The decision depends only
  on the current keys, never on the order they arrived in, so every
  gateway, whenever it started and however often it reconnected, reaches
  the same decisions.
- Changes mark the peers whose decision may have changed ("dirty"): the
  entry's own key, and the old and new owner of a changed claim.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from wgpy.registry.layout import (
    CLAIMS,
    PEERS,
    EntryError,
    PeerEntry,
    decode_entry,
    name_of_owner,
    network_prefix,
    prefix_text,
)


@dataclass(frozen=True)
class KeyValue:
    """One etcd key and value (the revisions the view needs)."""

    key: bytes
    value: bytes
    mod_revision: int = 0


@dataclass(frozen=True)
class Event:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class Decision:
    """`entry` set: apply it. Otherwise `reason` set: refused; both None: no entry."""

    entry: PeerEntry | None = None
    reason: str | None = None


class RegistryView:
    """The network's entries and claims, and the decision for each entry."""

    def __init__(self, network: str) -> None:
        self.prefix = network_prefix(network).encode()
        self._entries: dict[str, PeerEntry | EntryError] = {}
        self._claims: dict[str, str] = {}  # "address/length" -> owner (standard base64)
        self._dirty: set[str] = set()

    def load(self, kvs: Iterable[KeyValue]) -> None:
        """Replaces everything with a snapshot; every entry, old or new, is dirty."""
        self._dirty.update(self._entries)
        self._dirty.update(name_of_owner(owner) for owner in self._claims.values())
        self._entries.clear()
        self._claims.clear()
        for kv in kvs:
            self._put(kv)

    def update(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.kind == "put":
                self._put(event.kv)
            else:
                self._delete(event.kv.key)

    def take_dirty(self) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def names(self) -> list[str]:
        return list(self._entries)

    def decide(self, name: str) -> Decision:
        entry = self._entries.get(name)
        if entry is None:
            return Decision()
        if isinstance(entry, EntryError):
            return Decision(reason=f"malformed entry: {entry}")
        owner = entry.public_key.to_base64()
        for prefix in entry.allowed_ips:
            claimed_by = self._claims.get(prefix_text(prefix))
            if claimed_by is None:
                return Decision(
                    reason=f"allowed IP {prefix_text(prefix)} is not claimed (no ips/ key)"
                )
            if claimed_by != owner:
                return Decision(
                    reason=f"allowed IP {prefix_text(prefix)} belongs to peer {claimed_by[:60]}"
                )
        return Decision(entry=entry)

    def orphan_claims(self) -> list[tuple[str, str]]:
        """Claims whose peer has no entry: (prefix, owner); they block the prefix."""
        return [
            (prefix, owner)
            for prefix, owner in self._claims.items()
            if name_of_owner(owner) not in self._entries
        ]

    # --- events ---

    def _split(self, key: bytes) -> tuple[str, str] | None:
        """(kind, rest) for `peers/NAME` and `ips/ADDRESS/LENGTH`; None otherwise."""
        if not key.startswith(self.prefix):
            return None
        try:
            rest = key[len(self.prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        for kind in (PEERS, CLAIMS):
            if rest.startswith(kind):
                return kind, rest[len(kind) :]
        return None

    def _put(self, kv: KeyValue) -> None:
        match self._split(kv.key):
            case (kind, name) if kind == PEERS:
                try:
                    self._entries[name] = decode_entry(name, kv.value)
                except EntryError as e:
                    self._entries[name] = e
                self._dirty.add(name)
            case (kind, prefix) if kind == CLAIMS:
                self._claim_changed(prefix)
                self._claims[prefix] = kv.value.decode("utf-8", errors="replace").strip()
                self._claim_changed(prefix)

    def _delete(self, key: bytes) -> None:
        match self._split(key):
            case (kind, name) if kind == PEERS:
                if self._entries.pop(name, None) is not None:
                    self._dirty.add(name)
            case (kind, prefix) if kind == CLAIMS:
                self._claim_changed(prefix)
                self._claims.pop(prefix, None)

    def _claim_changed(self, prefix: str) -> None:
        owner = self._claims.get(prefix)
        if owner is not None:
            self._dirty.add(name_of_owner(owner))
