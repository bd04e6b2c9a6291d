"""The registry's keys and values in etcd (docs/registry.md is the reference).

- Everything of network NET lives under `/wgpy/networks/NET/`; a network
  name is 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
- `peers/KEY` holds one peer, KEY being its public key in URL-safe base64
  (`+` -> `-`, `/` -> `_`, with the `=`). The value is a JSON object with
  exactly these fields: `public_key` (standard base64, the same key),
  `allowed_ips` (a list of CIDRs, host bits zero), and optionally
  `endpoint` (`IP:PORT` or `[IPv6]:PORT`; names are never resolved),
  `persistent_keepalive` (0-65535) and `preshared_key_ref` (the name of a
  preshared key file each gateway keeps locally). Keys themselves are never
  stored: a `preshared_key` or `private_key` field, or any unknown field,
  makes the entry malformed.
- `ips/ADDRESS/LENGTH` claims one allowed IP for one peer: its value is the
  peer's public key (standard base64). ADDRESS is the canonical text
  (`ipaddress`/`netip` form: IPv4 dotted, IPv6 compressed lowercase). One
  key per prefix is what makes two peers with one allowed IP impossible:
  writers create it only where it is absent (an etcd transaction).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from wgpy._core import InvalidKeyError, PublicKey
from wgpy.changes import ChangeError
from wgpy.uapi.protocol import format_endpoint, parse_endpoint

ROOT = "/wgpy/networks/"
PEERS = "peers/"
CLAIMS = "ips/"
MAX_VALUE = 64 << 10
MAX_ALLOWED_IPS = 1024
FIELDS = frozenset(
    {"public_key", "allowed_ips", "endpoint", "persistent_keepalive", "preshared_key_ref"}
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")

Prefix = tuple[str, int]  # canonical address text, prefix length


class EntryError(ValueError):
    """A registry value or key that does not follow the layout."""


def valid_name(name: str) -> bool:
    """Network names and preshared key references: no path tricks possible."""
    return _NAME.fullmatch(name) is not None


def network_prefix(network: str) -> str:
    if not valid_name(network):
        raise EntryError(f"invalid network name {network[:70]!r} (1-64 of A-Z a-z 0-9 . _ -)")
    return f"{ROOT}{network}/"


def key_name(key: PublicKey) -> str:
    """The last part of a peer's key: URL-safe base64."""
    return base64.urlsafe_b64encode(bytes(key)).decode()


def key_from_name(name: str) -> PublicKey | None:
    try:
        raw = base64.urlsafe_b64decode(name.encode("ascii"))
        if len(name) != 44 or base64.urlsafe_b64encode(raw).decode() != name:
            return None
        return PublicKey.from_bytes(raw)
    except (ValueError, binascii.Error, InvalidKeyError, UnicodeEncodeError):
        return None


def name_of_owner(owner: str) -> str:
    """A claim's value (standard base64) as a peer key name (URL-safe)."""
    return owner.replace("+", "-").replace("/", "_")


def peer_key(network: str, key: PublicKey) -> str:
    return f"{network_prefix(network)}{PEERS}{key_name(key)}"


def claim_key(network: str, prefix: Prefix) -> str:
    return f"{network_prefix(network)}{CLAIMS}{prefix[0]}/{prefix[1]}"


def prefix_text(prefix: Prefix) -> str:
    return f"{prefix[0]}/{prefix[1]}"


def parse_prefix(text: str) -> Prefix:
    """A CIDR with its host bits zero, as (canonical address, length)."""
    if not isinstance(text, str) or "/" not in text:
        raise EntryError(f"allowed IP must be ADDRESS/LENGTH, not {str(text)[:60]!r}")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise EntryError(f"invalid allowed IP {text[:60]!r}: {e}") from None
    return str(network.network_address), network.prefixlen


@dataclass(frozen=True)
class PeerEntry:
    """One peer, as the registry describes it (public data only)."""

    public_key: PublicKey
    allowed_ips: tuple[Prefix, ...]  # sorted, no duplicates
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    preshared_key_ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "public_key": self.public_key.to_base64(),
            "allowed_ips": [prefix_text(p) for p in self.allowed_ips],
        }
        if self.endpoint is not None:
            d["endpoint"] = format_endpoint(self.endpoint)
        if self.persistent_keepalive:
            d["persistent_keepalive"] = self.persistent_keepalive
        if self.preshared_key_ref is not None:
            d["preshared_key_ref"] = self.preshared_key_ref
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def sorted_prefixes(prefixes: list[Prefix]) -> tuple[Prefix, ...]:
    def order(p: Prefix) -> tuple[int, int, int]:
        address = ipaddress.ip_address(p[0])
        return address.version, int(address), p[1]

    return tuple(sorted(set(prefixes), key=order))


def entry_from_dict(d: object) -> PeerEntry:
    """Validates a decoded value; raises EntryError naming the first problem."""
    if not isinstance(d, dict):
        raise EntryError("value is not a JSON object")
    for secret in ("preshared_key", "private_key"):
        if secret in d:
            raise EntryError(f"{secret} in the registry: keys are never stored there")
    unknown = sorted(set(d) - FIELDS)
    if unknown:
        raise EntryError(f"unknown field {unknown[0][:40]!r}")
    return PeerEntry(
        _public_key(d.get("public_key")),
        _allowed_ips(d.get("allowed_ips")),
        _endpoint(d.get("endpoint")),
        _keepalive(d.get("persistent_keepalive", 0)),
        _psk_ref(d.get("preshared_key_ref")),
    )


def _public_key(value: object) -> PublicKey:
    if not isinstance(value, str):
        raise EntryError("public_key is missing or not a string")
    try:
        return PublicKey.from_base64(value)
    except (InvalidKeyError, ValueError):
        raise EntryError(f"public_key is not a key: {value[:60]!r}") from None


def _allowed_ips(value: object) -> tuple[Prefix, ...]:
    if not isinstance(value, list):
        raise EntryError("allowed_ips is missing or not a list")
    if len(value) > MAX_ALLOWED_IPS:
        raise EntryError(f"more than {MAX_ALLOWED_IPS} allowed IPs")
    return sorted_prefixes([parse_prefix(v) for v in value])


def _endpoint(value: object) -> tuple[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EntryError("endpoint is not a string")
    try:
        host, port = parse_endpoint(value)
    except ChangeError as e:
        raise EntryError(str(e)) from None
    if port == 0:
        raise EntryError(f"endpoint {value[:60]!r} has port 0")
    return host, port


def _keepalive(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise EntryError(f"persistent_keepalive must be 0-65535, not {str(value)[:20]!r}")
    return value


def _psk_ref(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not valid_name(value):
        raise EntryError("preshared_key_ref must be a file name (1-64 of A-Z a-z 0-9 . _ -)")
    return value


def decode_entry(name: str, value: bytes) -> PeerEntry:
    """The entry stored at `peers/NAME`; raises EntryError if it is malformed."""
    key = key_from_name(name)
    if key is None:
        raise EntryError("the key name is not a URL-safe base64 public key")
    if len(value) > MAX_VALUE:
        raise EntryError(f"value over {MAX_VALUE} bytes")
    try:
        decoded = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EntryError(f"value is not JSON: {e}") from None
    entry = entry_from_dict(decoded)
    if entry.public_key != key:
        raise EntryError("public_key differs from the key name")
    return entry
