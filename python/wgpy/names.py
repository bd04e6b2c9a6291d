"""Endpoints by name: resolved, re-resolved, and chosen by what the host can reach now.

WireGuard keeps one endpoint address per peer, resolved once. wgpy keeps
what the address came from:

- A peer's endpoint may be a name (`wgpy up`'s `Endpoint = host:port`, the
  embedding API's `endpoint="host:port"`) or a list of candidates (wgpy's
  `Endpoints = a:port, b:port` extension, `endpoints=[...]`), each a name or
  an address. An address set with `wg set ... endpoint` replaces them: the
  peer then has that address only, as in wg.
- Each name is resolved to all its addresses, A and AAAA, as the system
  resolves it (getaddrinfo, so /etc/hosts counts), in a worker thread: the
  control plane never waits on it. Its DNS TTL, when DNS knows the name,
  sets when it is resolved again (between MIN_INTERVAL and MAX_INTERVAL;
  DEFAULT_INTERVAL when there is no TTL).
- It is also resolved again after every underlay change (wgpy.handover) and
  when handshakes to the current address go unanswered (a retransmission).
- Choosing: the addresses the host can reach now (a route of their family
  exists: a UDP connect() finds one) come first; among them the address
  that last worked (the peer's authenticated packets came from it), then
  the resolver's order. The endpoint moves to the choice when the current
  address cannot be reached, when a new resolution no longer contains it
  and the peer is not answering there, or, after unanswered handshakes, to
  the next reachable address.
- Roaming wins: while the peer answers at an address its packets moved the
  endpoint to, resolution does not move it.
- A name that stops resolving keeps its last addresses (the one in use
  stays); the failure is logged, shown in `wgpy show` and reported as an
  event, never fatal.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from wgpy._core import PeerState
from wgpy.events import EventKind

log = logging.getLogger("wgpy")

Address = tuple[str, int]
MIN_INTERVAL = 1.0
MAX_INTERVAL = 300.0
DEFAULT_INTERVAL = 30.0  # when the TTL is unknown (a name from /etc/hosts)
RETRY_INTERVAL = 5.0  # after a failure
RESOLVE_TIMEOUT = 5.0
TTL_TIMEOUT = 2.0
# The peer is "answering" while our packets have not gone unanswered this long.
ANSWER_GRACE = 2.0


def parse_candidate(text: str) -> Address:
    """`host:port` or `[IPv6]:port` into (host, port); raises ValueError."""
    host, colon, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text[:80]!r}")
    if "%" in host:
        raise ValueError(f"scope ids are not supported: {text[:80]!r}")
    if is_address(host):
        return str(ipaddress.ip_address(host)), int(port)  # the data plane's spelling
    check_name(host)
    return host, int(port)


def check_name(host: str) -> None:
    """Raises ValueError unless `host` can be a DNS name."""
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        raise ValueError(f"not a host name: {host[:80]!r}") from None
    if not host or len(encoded) > 253 or any(c in host for c in " \t\n/\\"):
        raise ValueError(f"not a host name: {host[:80]!r}")


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int) -> list[Address]:
    """All of `host`'s addresses (A and AAAA) with `port`, in the system's
    order (getaddrinfo in a worker thread); raises OSError."""
    if is_address(host):
        return [(host, port)]
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    addresses: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = (str(sockaddr[0]).partition("%")[0], port)
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    return addresses


async def dns_ttl(host: str) -> float | None:
    """The shortest TTL of the name's A and AAAA records, if DNS answers
    (a name from /etc/hosts has none)."""
    if is_address(host):
        return None
    # Imported here: a device without names does not pay for dnspython.
    import dns.asyncresolver
    import dns.exception
    import dns.rdatatype

    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = TTL_TIMEOUT
    ttls: list[float] = []
    for kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
        with contextlib.suppress(dns.exception.DNSException, OSError):
            answer = await resolver.resolve(host, kind, raise_on_no_answer=False)
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
    return min(ttls, default=None)


def reachable(address: str, fwmark: int = 0) -> bool:
    """Whether a route to `address` exists now (a UDP connect() sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            if fwmark:
                with contextlib.suppress(OSError):
                    probe.setsockopt(socket.SOL_SOCKET, 36, fwmark)  # SO_MARK
            probe.connect((address, 9))
    except OSError:
        return False
    return True


def answering(state: PeerState) -> bool:
    """Whether the peer answers us: nothing we sent has gone unanswered long."""
    return state.last_rx_auth > 0 and state.last_tx_auth - state.last_rx_auth < ANSWER_GRACE


def rank(
    addresses: Iterable[Address], can_reach: Callable[[str], bool], last_worked: Address | None
) -> list[Address]:
    """Reachable first, the one that last worked first among them, else in order."""
    ordered = list(addresses)
    return sorted(ordered, key=lambda a: (not can_reach(a[0]), a != last_worked, ordered.index(a)))


@dataclass
class NamedEndpoint:
    """One peer's candidates and what is known about them."""

    candidates: list[Address]
    resolved: dict[Address, list[Address]] = field(default_factory=dict)
    due: float = -math.inf  # Trio time of the next resolution
    last_worked: Address | None = None
    resolving: bool = False
    settled: trio.Event = field(default_factory=trio.Event)  # set after each resolution
    error: str | None = None
    resolved_at: float | None = None  # Unix time of the last successful resolution

    @property
    def addresses(self) -> list[Address]:
        """Every candidate's addresses, in candidate order (the last known
        ones for a candidate that fails to resolve now)."""
        out: list[Address] = []
        for c in self.candidates:
            out += [a for a in self.resolved.get(c, []) if a not in out]
        return out


class Names:
    """The named endpoints of one device and the task that keeps them fresh.

    `switch(peer_id, address, why)` moves a peer's endpoint (the device sets
    it in the data plane and tells handover); `state(peer_id)` reads the
    peer (None once it is gone); `report(kind, peer_id, detail)` reports.
    """

    def __init__(
        self,
        *,
        switch: Callable[[int, Address, str], None],
        state: Callable[[int], PeerState | None],
        report: Callable[[EventKind, int, str], None],
        fwmark: Callable[[], int],
    ) -> None:
        self._switch = switch
        self._state = state
        self._report = report
        self._fwmark = fwmark
        self.peers: dict[int, NamedEndpoint] = {}
        self._wake = trio.Event()

    # --- configuration ---------------------------------------------------------------

    def set(self, peer_id: int, candidates: list[Address]) -> None:
        """The peer's endpoint candidates (replacing any); resolved at once."""
        self.peers[peer_id] = NamedEndpoint(candidates)
        self._wake.set()

    def forget(self, peer_id: int) -> None:
        self.peers.pop(peer_id, None)

    def get(self, peer_id: int) -> NamedEndpoint | None:
        return self.peers.get(peer_id)

    # --- triggers --------------------------------------------------------------------

    def underlay_changed(self) -> None:
        """Resolve every name again soon (the network we ask through changed)."""
        for named in self.peers.values():
            named.due = -math.inf
        self._wake.set()

    def unanswered(self, peer_id: int, current: Address | None) -> None:
        """Handshakes to `current` went unanswered: move to the next reachable
        address now (the handshake retry goes there), and resolve again."""
        named = self.peers.get(peer_id)
        if named is None:
            return
        named.due = -math.inf
        self._wake.set()
        usable = [a for a in self._ranked(named) if self._reachable(a[0])]
        if not usable:
            return
        nxt = usable[(usable.index(current) + 1) % len(usable)] if current in usable else usable[0]
        if nxt != current:
            self._switch(peer_id, nxt, "handshakes unanswered")

    def path_lost(self, peer_id: int, current: Address | None) -> bool:
        """No route to `current` any more (wgpy.handover asks): move to a
        reachable address, if the peer has one; whether it moved."""
        named = self.peers.get(peer_id)
        if named is None:
            return False
        for a in self._ranked(named):
            if a != current and self._reachable(a[0]):
                self._switch(peer_id, a, f"no route to {current[0] if current else 'it'}")
                return True
        return False

    def worked(self, peer_id: int, address: Address | None) -> None:
        """The peer's authenticated packets came from `address`."""
        named = self.peers.get(peer_id)
        if named is not None and address is not None:
            named.last_worked = address

    # --- the task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolves each name when it is due, concurrently, until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                for peer_id, named in list(self.peers.items()):
                    if named.due <= now and not named.resolving:
                        nursery.start_soon(self.refresh, peer_id)
                waiting = (n.due for n in self.peers.values() if not n.resolving)
                with trio.move_on_at(min(waiting, default=math.inf)):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def refresh(self, peer_id: int) -> None:
        """Resolves the peer's names now and chooses its address; then asks
        DNS for their TTL, which sets when they are resolved next."""
        named = self.peers.get(peer_id)
        if named is None:
            return
        if named.resolving:  # the task is at it: wait for its answer
            await named.settled.wait()
            return
        named.resolving, named.due = True, math.inf
        try:
            errors = await self._resolve_all(named)
            if self.peers.get(peer_id) is named:  # not removed or replaced meanwhile
                self._resolved(peer_id, named, errors)
        finally:
            named.settled.set()
            named.settled = trio.Event()
        try:
            ttl = None if errors else await self._ttl(named)
        finally:
            named.resolving = False
            self._wake.set()
        if named.due != -math.inf:  # not asked again meanwhile
            interval = RETRY_INTERVAL if errors else DEFAULT_INTERVAL if ttl is None else ttl
            named.due = trio.current_time() + min(MAX_INTERVAL, max(MIN_INTERVAL, interval))

    async def _resolve_all(self, named: NamedEndpoint) -> list[str]:
        """Resolves every candidate; the errors of those that failed."""
        errors: list[str] = []
        for host, port in named.candidates:
            try:
                with trio.fail_after(RESOLVE_TIMEOUT):
                    named.resolved[(host, port)] = await resolve(host, port)
            except (OSError, ValueError, trio.TooSlowError) as e:
                reason = getattr(e, "strerror", None) or str(e) or "timed out"
                errors.append(f"{host}: {reason}")
        return errors

    async def _ttl(self, named: NamedEndpoint) -> float | None:
        ttls = [t for host, _ in named.candidates if (t := await dns_ttl(host)) is not None]
        return min(ttls, default=None)

    def _resolved(self, peer_id: int, named: NamedEndpoint, errors: list[str]) -> None:
        error = "; ".join(errors) or None
        if error and error != named.error:
            log.warning("peer %d: endpoint name: %s (keeping the last addresses)", peer_id, error)
            self._report("endpoint_resolution_failed", peer_id, error)
        named.error = error
        if len(errors) < len(named.candidates):
            named.resolved_at = time.time()
        self._choose(peer_id, named)

    def _choose(self, peer_id: int, named: NamedEndpoint) -> None:
        """Moves the endpoint if the current address is no longer right."""
        state = self._state(peer_id)
        if state is None or not named.addresses:
            return
        current = state.endpoint
        if current is not None and self._reachable(current[0]):
            if current in named.addresses or answering(state):
                return  # still valid, or the peer answers there (roaming wins)
        best = self._ranked(named)[0]
        if best != current and self._reachable(best[0]):
            why = "resolved" if current is None else f"{current[0]} is no longer right"
            self._switch(peer_id, best, why)

    def _ranked(self, named: NamedEndpoint) -> list[Address]:
        return rank(named.addresses, self._reachable, named.last_worked)

    def _reachable(self, address: str) -> bool:
        return reachable(address, self._fwmark())
