"""A gateway following its network in etcd: snapshot, watch, reconnect.

- Start: load a snapshot of the network's keys (one revision, read in
  pages), apply it, then watch from the next revision. Each batch of watch
  responses (all that arrived while the previous batch was applied) is
  applied as one change (wgpy.registry.gateway, through wgpy.changes).
- Liveness: besides the watch stream breaking, etcd is asked a small range
  every PROBE_INTERVAL seconds; no answer within PROBE_TIMEOUT ends the
  session, so a silent network is noticed as well as a refused connection.
- Outage: the device keeps every peer it has (they keep forwarding); the
  state becomes "disconnected" (log line, `registry_disconnected` event,
  `wgpy show`), and the gateway reconnects with a backoff of at most
  MAX_BACKOFF seconds, trying each endpoint in turn.
- Reconnect: the watch resumes from the last applied revision + 1, so no
  change is missed or applied twice; if etcd has compacted that revision
  away, a new snapshot replaces the old view and the difference is applied
  (peers deleted meanwhile are removed).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import trio

from wgpy import changes
from wgpy.events import DeviceEvent
from wgpy.registry.config import RegistryConfig, RegistryConfigError
from wgpy.registry.etcd import EtcdClient, EtcdCompacted, EtcdError, EtcdUnavailable, WatchBatch
from wgpy.registry.gateway import RECHECK_INTERVAL, Gateway, GatewayDevice
from wgpy.registry.report import RegistryReport
from wgpy.registry.view import RegistryView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


log = logging.getLogger("wgpy.registry")

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
MIN_BACKOFF = 0.25
MAX_BACKOFF = 2.0


class RegistrySync:
    """Keeps a device's registry peers in line with one etcd network."""

    def __init__(
        self, config: RegistryConfig, device: GatewayDevice, emit: Callable[[DeviceEvent], None]
    ) -> None:
        self.config = config
        self.url = config.display()
        self._device = device
        self._emit = emit
        self._view = RegistryView(config.network)
        self._gateway = Gateway(device, self.url, config.psk_dir, emit)
        self._revision: int | None = None  # the view is complete up to here
        self._state = "connecting"
        self._since = time.time()
        self._error: str | None = None
        self._reconnects = 0
        self._reloads = 0
        self._session_connected = False

    def report(self) -> RegistryReport:
        g = self._gateway
        return RegistryReport(
            url=self.url,
            state=self._state,
            since=self._since,
            revision=self._revision,
            peers=len(g.applied),
            refused=len(g.refused),
            reconnects=self._reconnects,
            reloads=self._reloads,
            error=self._error,
            refusals=[(r.time, r.name, r.reason) for r in g.recent],
            owned=frozenset(g.applied),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follows the registry until cancelled; never gives up on etcd."""
        task_status.started()
        failures = attempt = 0
        endpoints = self.config.target.endpoints
        while True:
            self._session_connected = False
            try:
                async with EtcdClient(endpoints[attempt % len(endpoints)], self.config.target) as c:
                    await self._session(c)
            except* (EtcdError, RegistryConfigError) as group:
                self._disconnected(str(_first(group)))
            except* Exception as group:  # a bug: reported, and retried like an outage
                log.error("%s: registry sync failed", self.url, exc_info=_first(group))
                self._disconnected(f"internal error: {_first(group)!r}")
            attempt += 1
            failures = 0 if self._session_connected else failures + 1
            await trio.sleep(min(MIN_BACKOFF * 2**failures, MAX_BACKOFF))

    async def _session(self, client: EtcdClient) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe, client)
            await self._follow(client)

    async def _probe(self, client: EtcdClient) -> None:
        while True:
            await trio.sleep(PROBE_INTERVAL)
            with trio.move_on_after(PROBE_TIMEOUT) as scope:
                await client.range(self._view.prefix, count_only=True, timeout=PROBE_TIMEOUT)
            if scope.cancelled_caught:
                raise EtcdUnavailable(f"{client.endpoint}: no answer within {PROBE_TIMEOUT:g} s")

    async def _follow(self, client: EtcdClient) -> None:
        while True:
            resumed = self._revision is not None
            try:
                if self._revision is None:
                    await self._reload(client)
                else:  # still there? Otherwise the watch would be cancelled at once
                    await client.range(self._view.prefix, revision=self._revision, count_only=True)
                assert self._revision is not None
                async with client.watch(self._view.prefix, self._revision + 1) as batches:
                    self._connected(client.endpoint, resumed)
                    await self._consume(batches)
            except* EtcdCompacted as group:
                log.warning("%s: %s: loading a new snapshot", self.url, _first(group))
                self._revision = None

    async def _reload(self, client: EtcdClient) -> None:
        revision, kvs = await client.snapshot(self._view.prefix)
        self._view.load(kvs)
        self._reloads += 1
        await self._apply(revision)

    async def _consume(self, batches: AsyncIterator[WatchBatch]) -> None:
        """Reads the watch into a queue; applies whatever has queued up at once."""
        send, receive = trio.open_memory_channel[WatchBatch](math.inf)

        async def read() -> None:
            async with send:
                async for batch in batches:
                    send.send_nowait(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            async with receive:
                while True:
                    batch = None
                    with trio.move_on_after(RECHECK_INTERVAL):
                        batch = await receive.receive()
                    if batch is None:  # quiet: try local refusals again
                        await self._apply(self._revision, extra=self._gateway.recheck())
                        continue
                    revision = self._update(batch)
                    while True:
                        try:
                            revision = max(revision, self._update(receive.receive_nowait()))
                        except trio.WouldBlock:
                            break
                    await self._apply(revision)

    def _update(self, batch: WatchBatch) -> int:
        """Feeds one response to the view; returns the revision it completes.
        Not the header's: a catching-up watch reports the store's newest
        revision with older events."""
        self._view.update(batch.events)
        if batch.events:
            return max(event.kv.mod_revision for event in batch.events)
        return batch.revision

    async def _apply(self, revision: int | None, extra: set[str] | None = None) -> None:
        """Applies what changed. The dirty names are taken under the lock and
        applied shielded: a cancellation never loses them half-way."""
        async with self._device.config_lock:
            with trio.CancelScope(shield=True):
                names = self._view.take_dirty() | (extra or set())
                change, outcome = self._gateway.plan(self._view, names)
                if change.peers:
                    await changes.apply(self._device, change)
                self._revision = revision
        if change.peers:
            log.info(
                "%s: revision %s applied: %d added, %d updated, %d removed (at %.6f)",
                self.url,
                revision,
                outcome.added,
                outcome.updated,
                outcome.removed,
                time.time(),
            )

    def _connected(self, endpoint: str, resumed: bool) -> None:
        how = "resumed" if resumed else "loaded"
        log.info("%s: connected to %s, %s at revision %s", self.url, endpoint, how, self._revision)
        self._session_connected = True
        self._set_state("connected", None)
        detail = f"{endpoint}, {how} at revision {self._revision}"
        self._emit(DeviceEvent("registry_connected", time.time(), detail=detail))

    def _disconnected(self, error: str) -> None:
        if self._state == "connected":
            self._reconnects += 1
            log.warning("%s: lost etcd: %s; peers stay as they are", self.url, error)
            self._emit(DeviceEvent("registry_disconnected", time.time(), detail=error))
            self._set_state("disconnected", error)
        else:
            log.debug("%s: cannot reach etcd: %s", self.url, error)
            if self._error is None:
                log.warning("%s: cannot reach etcd: %s; retrying", self.url, error)
            self._set_state(self._state, error)

    def _set_state(self, state: str, error: str | None) -> None:
        if state != self._state:
            self._since = time.time()
        self._state = state
        self._error = error


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first exception in a (nested) group: the cause worth one log line."""
    first: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
