"""The per-source handshake rate limiter used under load: the kernel's `ratelimiter.c`.

- One token bucket per source: 20 packets per second, burst 5. A new source starts with a full
  bucket and spends one packet. Tokens are integer nanoseconds (one packet costs 50 ms), so the
  arithmetic is exact and matches the kernel's.
- IPv4 sources are keyed by address, IPv6 sources by their /64: one host usually owns a whole
  /64 and could otherwise rotate addresses to get fresh buckets.
- An IPv4-mapped IPv6 address (from a dual-stack socket) counts as its IPv4 address; keyed by
  /64 all of IPv4 would share the bucket of ::ffff:0:0/64.
- Entries idle for more than 1 s are dropped. Such a bucket has refilled (a full bucket takes
  250 ms), so forgetting it changes no answer; it only bounds the table.
- At most `max_entries` sources are tracked; a new source beyond that is refused, like the
  kernel when its table is full, rather than evicting a source that is being limited.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wgpy.constants import RATELIMITER_PACKETS_BURSTABLE, RATELIMITER_PACKETS_PER_SECOND

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "ENTRY_TIMEOUT",
    "IPAddress",
    "Ratelimiter",
    "source_key",
]

IPAddress = str | ipaddress.IPv4Address | ipaddress.IPv6Address
# (IP version, address or /64 prefix as an int)
SourceKey = tuple[int, int]

NS_PER_SECOND = 1_000_000_000
PACKET_COST = NS_PER_SECOND // RATELIMITER_PACKETS_PER_SECOND
TOKEN_MAX = PACKET_COST * RATELIMITER_PACKETS_BURSTABLE
ENTRY_TIMEOUT = 1.0
_ENTRY_TIMEOUT_NS = int(ENTRY_TIMEOUT * NS_PER_SECOND)
# The kernel scales its limit with RAM; 65536 entries is a few MB here.
DEFAULT_MAX_ENTRIES = 65536


def source_key(ip: IPAddress) -> SourceKey:
    """The bucket key of a source address: the IPv4 address, or the IPv6 /64."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            return (6, int(address) >> 64)
        address = mapped
    return (4, int(address))


@dataclass(slots=True)
class _Bucket:
    tokens: int
    last_ns: int


class Ratelimiter:
    """Token buckets per source; `allow` answers whether one more handshake may be processed."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        # Kept in order of last use (oldest first), so collecting idle entries stops at the
        # first fresh one instead of scanning the whole table.
        self._buckets: dict[SourceKey, _Bucket] = {}
        self._latest_ns: int | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: IPAddress, now: float) -> bool:
        """Take one packet from `ip`'s bucket at time `now` (seconds, monotonic)."""
        now_ns = self._tick(now)
        self._collect(now_ns)
        key = source_key(ip)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            return self._add(key, now_ns)
        self._buckets[key] = bucket  # re-inserted last: most recently used
        tokens = min(TOKEN_MAX, bucket.tokens + now_ns - bucket.last_ns)
        bucket.last_ns = now_ns
        allowed = tokens >= PACKET_COST
        bucket.tokens = tokens - PACKET_COST if allowed else tokens
        return allowed

    def gc(self, now: float) -> None:
        """Drop the entries idle for more than ENTRY_TIMEOUT (`allow` does this too)."""
        self._collect(self._tick(now))

    def clear(self) -> None:
        self._buckets.clear()

    def _tick(self, now: float) -> int:
        # Never let time run backwards: the buckets and their order depend on it.
        now_ns = round(now * NS_PER_SECOND)
        if self._latest_ns is None or now_ns > self._latest_ns:
            self._latest_ns = now_ns
        return self._latest_ns

    def _add(self, key: SourceKey, now_ns: int) -> bool:
        if len(self._buckets) >= self._max_entries:
            return False
        self._buckets[key] = _Bucket(tokens=TOKEN_MAX - PACKET_COST, last_ns=now_ns)
        return True

    def _collect(self, now_ns: int) -> None:
        # Running on every call costs O(1) amortized (each entry is dropped once), and
        # frees room for new sources sooner than the kernel's once-a-second sweep.
        expired: list[SourceKey] = []
        for key, bucket in self._buckets.items():
            if now_ns - bucket.last_ns <= _ENTRY_TIMEOUT_NS:
                break
            expired.append(key)
        for key in expired:
            del self._buckets[key]
