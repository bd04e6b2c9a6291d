"""A peer's endpoint as configured: an address, as wg sets it, or names and
candidates that wgpy.names keeps current.

The rules:

- An endpoint given as one address is set at once, as `wg set` sets it,
  and whatever names the peer had are forgotten.
- Names, or several candidates, go to wgpy.names; if the first candidate is
  an address it is set at once, the others wait for their resolution.
- wgpy.names moves the endpoint through `switch`. The first address a peer
  gets is set like a configured one (its staged packets go). A later move
  is logged, reported (`endpoint_switched`) and announced at once: handover
  re-announces from the new path; without handover a keepalive goes (a
  handshake if no keypair can send).
- What the peer shows wgpy.names: the address its authenticated packets
  last came from (`worked`) and handshakes going unanswered.

Endpoints talk to the device through a narrow interface: the data plane,
the live peers by id, the handover watcher (if any), the fwmark and the
event fan-out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from wgpy._core import Datapath, PeerState
from wgpy.events import DeviceEvent, EventKind
from wgpy.handover import Handover
from wgpy.names import Address, NamedEndpoint, Names, is_address, parse_candidate
from wgpy.peer import Endpoint, Peer

log = logging.getLogger("wgpy")


def candidates(
    endpoint: Endpoint | str | None, endpoints: Iterable[Endpoint | str] | None
) -> list[Address] | None:
    """`endpoint` then `endpoints`, validated (ValueError); None if neither."""
    given = ([] if endpoint is None else [endpoint]) + list(endpoints or ())
    out: list[Address] = []
    for e in given:
        if (c := _candidate(e)) not in out:
            out.append(c)
    return out or None


def _candidate(endpoint: Endpoint | str) -> Address:
    if isinstance(endpoint, str):
        return parse_candidate(endpoint)
    host, port = endpoint
    return parse_candidate(f"[{host}]:{port}")


class Endpoints:
    """The configured endpoints of one device's peers."""

    def __init__(
        self,
        name: Callable[[], str],
        *,
        datapath: Callable[[], Datapath],
        peer: Callable[[int], Peer | None],
        handover: Callable[[], Handover | None],
        fwmark: Callable[[], int],
        emit: Callable[[DeviceEvent], None],
    ) -> None:
        self._name = name
        self._dp = datapath
        self._peer = peer
        self._handover = handover
        self._emit = emit
        self.names = Names(
            switch=self.switch, state=self._state, report=self._report, fwmark=fwmark
        )

    # --- configuration ---------------------------------------------------------------

    def configure(self, peer: Peer, given: list[Address]) -> None:
        """The peer's endpoint from the configuration (rules above)."""
        if len(given) == 1 and is_address(given[0][0]):
            self.names.forget(peer.id)
            self._set(peer, given[0])
            return
        self.names.set(peer.id, given)
        if is_address(given[0][0]):
            self._set(peer, given[0])

    def set_names(self, peer: Peer, names: list[Address]) -> None:
        """The candidates behind the peer's endpoint, leaving the current
        address as it is until they are resolved."""
        self.names.set(peer.id, names)

    def named(self, peer: Peer) -> NamedEndpoint | None:
        return self.names.get(peer.id)

    def forget(self, peer: Peer) -> None:
        self.names.forget(peer.id)

    # --- what the peer shows -----------------------------------------------------------

    def worked(self, peer: Peer, endpoint: Endpoint | None) -> None:
        self.names.worked(peer.id, endpoint)

    def unanswered(self, peer: Peer) -> None:
        self.names.unanswered(peer.id, self._dp().peer_state(peer.id).endpoint)

    # --- moving the endpoint -------------------------------------------------------------

    def switch(self, peer_id: int, address: Address, why: str) -> None:
        """wgpy.names moves a peer's endpoint (rules above)."""
        peer = self._peer(peer_id)
        if peer is None:
            return
        dp = self._dp()
        old = dp.peer_state(peer_id).endpoint
        if old is None:
            self._set(peer, address)
            dp.send_staged(peer_id)
            return
        dp.set_endpoint(peer_id, address)
        peer.endpoint_configured()
        log.info("%s: %s: endpoint %s -> %s (%s)", self._name(), peer, old, address, why)
        self._emit(DeviceEvent("endpoint_switched", time.time(), peer.public_key, address, why))
        self._announce(peer_id)

    def _announce(self, peer_id: int) -> None:
        handover, dp = self._handover(), self._dp()
        if handover is not None and handover.running:
            handover.switched(peer_id)
        elif dp.peer_state(peer_id).can_send:
            dp.send_keepalive(peer_id)
        else:
            dp.request_handshake(peer_id)

    def _set(self, peer: Peer, address: Address) -> None:
        self._dp().set_endpoint(peer.id, address)
        peer.endpoint_configured()
        if (handover := self._handover()) is not None:
            handover.endpoint_set(peer.id)

    def _state(self, peer_id: int) -> PeerState | None:
        return self._dp().peer_state(peer_id) if self._peer(peer_id) is not None else None

    def _report(self, kind: EventKind, peer_id: int, detail: str) -> None:
        if (peer := self._peer(peer_id)) is not None:
            self._emit(DeviceEvent(kind, time.time(), peer.public_key, None, detail))
