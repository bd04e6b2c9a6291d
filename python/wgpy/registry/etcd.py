"""An etcd v3 client for Trio, over etcd's JSON gateway (`/v3/...`) and httpx.

- Only what the registry needs: ranges (and consistent paginated
  snapshots), transactions, a streaming watch and user authentication.
  Keys and values are bytes; the gateway's base64 and string-encoded
  integers stay inside this module.
- Errors are three kinds: `EtcdUnavailable` (cannot reach etcd, timed out,
  or it said "unavailable": retry later), `EtcdCompacted` (the revision
  asked for is gone: load a new snapshot) and `EtcdRequestError` (etcd
  refused the request: bad credentials, permission denied, ...). httpx's
  own exceptions never leave this module.
- Authentication: with a user, the client gets a token from
  `/v3/auth/authenticate` and sends it as `Authorization`; an expired
  token is renewed once per request. The password is read from its file
  when connecting and never logged.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from wgpy.registry.config import EtcdTarget
from wgpy.registry.view import Event, KeyValue

log = logging.getLogger("wgpy.registry")

REQUEST_TIMEOUT = 5.0
SNAPSHOT_PAGE = 1000
# gRPC status codes etcd reports.
UNAVAILABLE, UNAUTHENTICATED, OUT_OF_RANGE, DEADLINE_EXCEEDED = 14, 16, 11, 4

JSON = dict[str, Any]


class EtcdError(Exception):
    """Something went wrong talking to etcd; the message is one line."""


class EtcdUnavailable(EtcdError):
    """etcd cannot be reached or did not answer in time."""


class EtcdCompacted(EtcdError):
    """The revision asked for has been compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (etcd keeps revisions from {compact_revision})")
        self.compact_revision = compact_revision


class EtcdRequestError(EtcdError):
    """etcd refused the request."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _kv(d: JSON) -> KeyValue:
    return KeyValue(
        base64.b64decode(d.get("key", "")),
        base64.b64decode(d.get("value", "")),
        int(d.get("mod_revision", 0)),
    )


def _revision(d: JSON) -> int:
    return int(d.get("header", {}).get("revision", 0))


# --- transaction building blocks (etcd's Compare and RequestOp, as JSON) ---


def absent(key: bytes) -> JSON:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def mod_revision_is(key: bytes, revision: int) -> JSON:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def value_is(key: bytes, value: bytes) -> JSON:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def put(key: bytes, value: bytes) -> JSON:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def delete(key: bytes) -> JSON:
    return {"request_delete_range": {"key": b64(key)}}


@dataclass(frozen=True)
class WatchBatch:
    """One watch response: its events, and the store revision it reports."""

    revision: int
    events: list[Event]


class EtcdClient:
    """One connection target; use as ``async with EtcdClient(url, target)``."""

    def __init__(self, endpoint: str, target: EtcdTarget) -> None:
        self.endpoint = endpoint
        self._target = target
        self._http: httpx.AsyncClient | None = None
        self._token: str | None = None

    async def __aenter__(self) -> EtcdClient:
        self._http = httpx.AsyncClient(
            base_url=self.endpoint,
            verify=self._target.ssl_context() or False,
            timeout=REQUEST_TIMEOUT,
            trust_env=False,  # never through a proxy from the environment
        )
        try:
            await self._authenticate()
        except BaseException:
            await self._http.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "use EtcdClient as an async context manager"
        return self._http

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self) -> None:
        if self._target.user is None:
            return
        body = {"name": self._target.user, "password": self._target.password()}
        self._token = None
        reply = await self._post_once("/v3/auth/authenticate", body)
        self._token = str(reply.get("token", "")) or None

    async def post(self, path: str, body: JSON, timeout: float | None = None) -> JSON:
        """One request; renews an expired token once."""
        try:
            return await self._post_once(path, body, timeout)
        except EtcdRequestError as e:
            if self._token is None or "auth token" not in str(e):
                raise
        await self._authenticate()
        return await self._post_once(path, body, timeout)

    async def _post_once(self, path: str, body: JSON, timeout: float | None = None) -> JSON:
        try:
            response = await self.http.post(
                path, json=body, headers=self._headers(), timeout=timeout or REQUEST_TIMEOUT
            )
        except httpx.TimeoutException:
            raise EtcdUnavailable(f"{self.endpoint}: no answer within the timeout") from None
        except httpx.HTTPError as e:
            raise EtcdUnavailable(f"{self.endpoint}: {_reason(e)}") from None
        data = _json_or_empty(response.text)
        if not data:  # not etcd's JSON: say what came instead
            text = " ".join(response.text.split())[:200]
            error = EtcdUnavailable if response.status_code >= 500 else EtcdRequestError
            raise error(f"{self.endpoint}: HTTP {response.status_code}: {text}")
        if "error" in data or response.status_code != 200:
            raise _error(data, response.status_code)
        return data

    # --- KV ---

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        count_only: bool = False,
        timeout: float | None = None,
    ) -> tuple[int, list[KeyValue], bool]:
        """(store revision, key-values, more)."""
        body: JSON = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if count_only:
            body["count_only"] = True
        reply = await self.post("/v3/kv/range", body, timeout)
        kvs = [_kv(d) for d in reply.get("kvs", [])]
        return _revision(reply), kvs, bool(reply.get("more", False))

    async def get(self, key: bytes) -> KeyValue | None:
        _, kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def snapshot(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision, read in pages."""
        revision, kvs, more = await self.range(prefix, prefix_end(prefix), limit=SNAPSHOT_PAGE)
        while more:
            start = kvs[-1].key + b"\0"
            _, page, more = await self.range(
                start, prefix_end(prefix), revision=revision, limit=SNAPSHOT_PAGE
            )
            kvs += page
        return revision, kvs

    async def txn(
        self, compare: Sequence[JSON], success: Sequence[JSON], failure: Sequence[JSON] = ()
    ) -> tuple[bool, int]:
        """(succeeded, revision after it)."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        reply = await self.post("/v3/kv/txn", body)
        return bool(reply.get("succeeded", False)), _revision(reply)

    async def compact(self, revision: int) -> None:
        await self.post("/v3/kv/compaction", {"revision": str(revision)})

    # --- watch ---

    @asynccontextmanager
    async def watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchBatch]]:
        """Watches every key under `prefix` from `start_revision`; yields once
        etcd has created the watch. Raises EtcdCompacted if that revision
        is gone, EtcdUnavailable when the stream breaks or ends."""
        request = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=None)  # a quiet watch is not a dead one
        try:
            async with self.http.stream(
                "POST", "/v3/watch", json=request, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error(_json_or_empty(response.text), response.status_code)
                batches = self._batches(response.aiter_lines())
                try:
                    if await anext(batches, None) is None:  # the "created" response
                        raise EtcdUnavailable(f"{self.endpoint}: watch ended before it started")
                    yield batches
                finally:
                    await batches.aclose()
        except httpx.HTTPError as e:
            raise EtcdUnavailable(f"{self.endpoint}: watch: {_reason(e)}") from None

    async def _batches(self, lines: AsyncIterator[str]) -> AsyncGenerator[WatchBatch, None]:
        try:
            async for batch in self._parse(lines):
                yield batch
        except httpx.HTTPError as e:  # read in whichever task iterates
            raise EtcdUnavailable(f"{self.endpoint}: watch: {_reason(e)}") from None
        raise EtcdUnavailable(f"{self.endpoint}: watch stream ended")

    async def _parse(self, lines: AsyncIterator[str]) -> AsyncGenerator[WatchBatch, None]:
        async for line in lines:
            if not line.strip():
                continue
            message = _json_or_empty(line)
            if "error" in message:
                error = message["error"]
                raise EtcdUnavailable(f"watch: {error.get('message', error)}")
            result = message.get("result", {})
            if int(result.get("compact_revision", 0)) > 0:
                raise EtcdCompacted(int(result["compact_revision"]))
            if result.get("canceled"):
                raise EtcdUnavailable(f"watch canceled: {result.get('cancel_reason', '')}")
            events = [
                Event("delete" if e.get("type") == "DELETE" else "put", _kv(e.get("kv", {})))
                for e in result.get("events", [])
            ]
            yield WatchBatch(_revision(result), events)


def _json_or_empty(text: str) -> JSON:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reason(e: httpx.HTTPError) -> str:
    """One line for a transport error (connection refused, reset, TLS...):
    the innermost cause that says something."""
    text = type(e).__name__
    cause: BaseException | None = e
    for _ in range(10):  # causes chain a few levels deep (httpx, httpcore, ssl)
        if cause is None:
            break
        if str(cause).strip():
            text = str(cause)
        cause = cause.__cause__ or cause.__context__
    return " ".join(text.split())[:200]


def _error(data: JSON, status: int) -> EtcdError:
    message = str(data.get("message") or data.get("error") or f"HTTP status {status}")
    code = int(data.get("code", 0) or 0)
    if code == OUT_OF_RANGE and "compacted" in message:
        return EtcdCompacted(0)
    if code in (UNAVAILABLE, DEADLINE_EXCEEDED) or (status >= 500 and code == 0):
        return EtcdUnavailable(message)
    return EtcdRequestError(message)
