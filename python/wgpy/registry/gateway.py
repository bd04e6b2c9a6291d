"""Turning the registry's decisions into device changes, on one gateway.

- Ownership: the registry owns the peers it created on this device, and
  only those. A peer configured locally (UAPI `set`, `wgpy up`, the
  embedding API) is never changed or removed by the registry; a registry
  entry with the key of a local peer, or an allowed IP a local peer has,
  is refused on this gateway while that is so. A registry peer removed
  locally (`wg set ... remove`, `wg setconf`) is created again: the
  registry is the source of truth for its own peers. Both are looked at
  again after RECHECK_INTERVAL seconds without registry changes.
- Every batch of decisions becomes one `DeviceChange` applied by
  `wgpy.changes.apply` (all or nothing, like a UAPI set), under the
  device's configuration lock: removals first, then creations and updates.
  An update sends only what changed in the entry, so an endpoint the peer
  roamed to is kept until the registry says otherwise.
- A preshared key reference names a file in the gateway's psk-dir (wg's
  base64 format); it is read when the peer is applied. A gateway without
  the file refuses the peer rather than run it without its key.
- A refusal is logged (warning) and reported (event, `wgpy show`) once per
  reason; an entry that becomes acceptable again is logged as such.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from wgpy._core import PresharedKey, PublicKey
from wgpy.changes import AllowedIPOp, Configurable, DeviceChange, PeerChange
from wgpy.config import ConfigError, read_key_file
from wgpy.events import DeviceEvent
from wgpy.registry.layout import PeerEntry, Prefix, key_from_name, key_name, prefix_text
from wgpy.registry.view import RegistryView

log = logging.getLogger("wgpy.registry")

RECHECK_INTERVAL = 10.0
RECENT_REFUSALS = 16


class GatewayDevice(Configurable, Protocol):
    """What the registry needs of a device (wgpy.device.Device)."""

    @property
    def config_lock(self) -> trio.Lock: ...

    def allowed_ip_prefixes(self, public_key: PublicKey) -> list[tuple[str, int]]: ...


@dataclass(frozen=True)
class Refusal:
    time: float
    name: str  # the entry's key name (URL-safe base64, or whatever was written)
    reason: str


@dataclass
class Outcome:
    """What one batch did."""

    added: int = 0
    updated: int = 0
    removed: int = 0


class LocalConflict(Exception):
    """This gateway's own state keeps it from applying an entry."""


class Gateway:
    """The registry peers of one device, and what was refused."""

    def __init__(
        self, device: GatewayDevice, name: str, psk_dir: Path, emit: Callable[[DeviceEvent], None]
    ) -> None:
        self._device = device
        self._name = name  # for log lines: the network's display URL
        self._psk_dir = psk_dir
        self._emit = emit
        self.applied: dict[PublicKey, PeerEntry] = {}
        self.refused: dict[str, str] = {}
        self._local_refusals: set[str] = set()
        self.recent: deque[Refusal] = deque(maxlen=RECENT_REFUSALS)

    def recheck(self) -> set[str]:
        """Names worth deciding again when the registry is quiet: those
        refused for local reasons, and registry peers removed locally."""
        names = set(self._local_refusals)
        for key in self.applied:
            try:
                self._device.peer(key)
            except KeyError:
                names.add(key_name(key))
        return names

    def plan(self, view: RegistryView, names: Iterable[str]) -> tuple[DeviceChange, Outcome]:
        """The change that brings `names` in line with `view`. Call under the
        device's configuration lock, and apply the change before releasing it."""
        removals: list[PeerChange] = []
        others: list[PeerChange] = []
        outcome = Outcome()
        local = _LocalPeers(self._device, self.applied)
        for name in sorted(names):
            key = key_from_name(name)
            if key is not None and key in self.applied and not local.exists(key):
                log.info("%s: registry peer %s was removed locally", self._name, name)
                del self.applied[key]
            change = self._plan_one(view, name, key, local)
            if change is None:
                continue
            if change.remove:
                removals.append(change)
                outcome.removed += 1
            else:
                others.append(change)
                if change.update_only:
                    outcome.updated += 1
                else:
                    outcome.added += 1
        return DeviceChange(peers=removals + others), outcome

    def _plan_one(
        self, view: RegistryView, name: str, key: PublicKey | None, local: _LocalPeers
    ) -> PeerChange | None:
        decision = view.decide(name)
        entry, reason = decision.entry, decision.reason
        psk: PresharedKey | None = None
        if entry is not None and key is not None:
            try:
                local.check(entry)
                psk = self._preshared_key(entry)
            except LocalConflict as e:
                entry, reason = None, str(e)
                self._local_refusals.add(name)
        if entry is None or key is None:
            self._refuse(name, key, reason)
            if key is not None and self.applied.pop(key, None) is not None:
                return PeerChange(key, remove=True)
            return None
        self._accept(name)
        old = self.applied.get(key)
        self.applied[key] = entry
        if old is None:
            return _create(entry, psk)
        return _update(old, entry, psk)

    def _preshared_key(self, entry: PeerEntry) -> PresharedKey | None:
        if entry.preshared_key_ref is None:
            return None
        path = self._psk_dir / entry.preshared_key_ref
        try:
            return read_key_file(path, PresharedKey)
        except (OSError, ConfigError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise LocalConflict(f"preshared key reference {path}: {reason}") from None

    def _refuse(self, name: str, key: PublicKey | None, reason: str | None) -> None:
        if reason is None:  # no entry any more: nothing to refuse
            self.refused.pop(name, None)
            self._local_refusals.discard(name)
            return
        if self.refused.get(name) == reason:
            return
        self.refused[name] = reason
        log.warning("%s: refused peer %s: %s", self._name, name[:60], reason)
        self.recent.append(Refusal(time.time(), name, reason))
        self._emit(
            DeviceEvent("registry_refused", time.time(), key, detail=f"{name[:60]}: {reason}")
        )

    def _accept(self, name: str) -> None:
        self._local_refusals.discard(name)
        if self.refused.pop(name, None) is not None:
            log.info("%s: peer %s accepted now", self._name, name)


class _LocalPeers:
    """The device's peers that are not the registry's, read once per batch."""

    def __init__(self, device: GatewayDevice, applied: dict[PublicKey, PeerEntry]) -> None:
        self._device = device
        self._keys = {peer.public_key for peer in device.peers}
        self._local = self._keys - applied.keys()
        self._prefixes: dict[Prefix, PublicKey] | None = None

    def exists(self, key: PublicKey) -> bool:
        return key in self._keys

    def check(self, entry: PeerEntry) -> None:
        """Raises LocalConflict if a local peer holds the entry's key or IPs."""
        if entry.public_key == self._device.public_key:
            raise LocalConflict("it is this gateway's own public key")
        if entry.public_key in self._local:
            raise LocalConflict("a local peer has this public key (the registry leaves it alone)")
        prefixes = self._local_prefixes()
        for prefix in entry.allowed_ips:
            if prefix in prefixes:
                raise LocalConflict(f"allowed IP {prefix_text(prefix)} belongs to a local peer")

    def _local_prefixes(self) -> dict[Prefix, PublicKey]:
        if self._prefixes is None:
            self._prefixes = {}
            for key in self._local:
                for address, length in self._device.allowed_ip_prefixes(key):
                    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
                    self._prefixes[(str(network.network_address), length)] = key
        return self._prefixes


def _adds(entry: PeerEntry) -> list[AllowedIPOp]:
    return [("add", address, length) for address, length in entry.allowed_ips]


def _create(entry: PeerEntry, psk: PresharedKey | None) -> PeerChange:
    return PeerChange(
        entry.public_key,
        preshared_key=psk,
        endpoint=entry.endpoint,
        persistent_keepalive=entry.persistent_keepalive,
        allowed_ips=_adds(entry),
    )


def _update(old: PeerEntry, new: PeerEntry, psk: PresharedKey | None) -> PeerChange | None:
    """Only what changed; None if nothing did."""
    if old == new:
        return None
    change = PeerChange(new.public_key, update_only=True)
    if new.allowed_ips != old.allowed_ips:
        change.allowed_ips = [("replace", "", 0), *_adds(new)]
    if new.endpoint != old.endpoint:
        change.endpoint = new.endpoint  # None (no endpoint any more) keeps the current one
    if new.persistent_keepalive != old.persistent_keepalive:
        change.persistent_keepalive = new.persistent_keepalive
    if new.preshared_key_ref != old.preshared_key_ref:
        change.preshared_key = psk
        change.clear_preshared_key = psk is None
    return change
