"""The Trio side of the userspace stack (`wgpy._core.Netstack`): turns its
events into awaited results.

- Connections: `connect` queues one and waits for its `connected` or
  `failed` event; `connect_detached` queues one whose failure is only
  reported to a callback (port forwards, where the local socket has been
  handed over and the stack resets it on failure).
- Listening ports: each has a bounded channel of accepted connections; the
  stack itself bounds how many wait (its backlog), so the channel never
  fills in practice; if it does, the connection is aborted, not queued.
- One task (`run`) reads the events; everything else only registers
  interest. Bytes never pass through here: the stack splices them.
- When the device stops (`close`), every wait ends: pending connects fail
  with ENETDOWN and listeners' channels close, so nothing waits for an
  event that can no longer come.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from wgpy._core import Netstack

log = logging.getLogger("wgpy")

# Events handled before yielding to Trio.
EVENT_BATCH = 256


@dataclass(frozen=True)
class Accepted:
    """A connection to a listened port, waiting for a local socket."""

    id: int
    remote: tuple[str, int]
    local: tuple[str, int]


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: OSError | None = None


def connect_error(reason: str, timed_out: bool) -> OSError:
    """ConnectionRefusedError or TimeoutError, as a socket's connect raises."""
    return OSError(errno.ETIMEDOUT if timed_out else errno.ECONNREFUSED, reason)


FailureCallback = Callable[[int, OSError], None]


class StackEvents:
    """Dispatches one Netstack's events (see the module notes)."""

    def __init__(self, stack: Netstack) -> None:
        self.stack = stack
        self._waiters: dict[int, _Waiter] = {}
        self._detached: dict[int, FailureCallback] = {}
        self._listeners: dict[int, trio.MemorySendChannel[Accepted]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(self.stack.event_fd)
            for event in self.stack.take_events(EVENT_BATCH):
                self._dispatch(event)
            await trio.lowlevel.checkpoint()

    def _dispatch(self, event: tuple[object, ...]) -> None:
        match event:
            case ("connected", int(id_)):
                self._detached.pop(id_, None)
                if waiter := self._waiters.pop(id_, None):
                    waiter.done.set()
            case ("failed", int(id_), str(reason), bool(timed_out)):
                self._failed(id_, connect_error(reason, timed_out))
            case ("accepted", int(port), int(id_), (str(rh), int(rp)), (str(lh), int(lp))):
                self._accepted(port, Accepted(id_, (rh, rp), (lh, lp)))

    def _failed(self, id_: int, error: OSError) -> None:
        if callback := self._detached.pop(id_, None):
            callback(id_, error)
        if waiter := self._waiters.pop(id_, None):
            waiter.error = error
            waiter.done.set()

    def _accepted(self, port: int, accepted: Accepted) -> None:
        channel = self._listeners.get(port)
        try:
            if channel is None:
                raise trio.BrokenResourceError
            channel.send_nowait(accepted)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.stack.abort(accepted.id)

    async def connect(
        self, host: str, port: int, *, fd: int | None = None, timeout: float = 10.0
    ) -> int:
        """Opens a connection and waits until it is established (splicing
        `fd` to it, if given); raises ConnectionRefusedError or TimeoutError.
        Cancelled, it aborts the connection."""
        id_ = self.stack.connect(host, port, fd, timeout)
        waiter = self._waiters[id_] = _Waiter()
        try:
            await waiter.done.wait()
        except BaseException:
            self._waiters.pop(id_, None)
            self.stack.abort(id_)
            raise
        if waiter.error is not None:
            raise waiter.error
        return id_

    def connect_detached(
        self, host: str, port: int, fd: int, on_failure: FailureCallback, timeout: float = 10.0
    ) -> int:
        """Opens a connection spliced to `fd` and returns at once; the stack
        resets `fd`'s connection if it fails, and `on_failure` is told why."""
        id_ = self.stack.connect(host, port, fd, timeout)
        self._detached[id_] = on_failure
        return id_

    def listen(
        self, port: int, backlog: int = 1024
    ) -> tuple[int, trio.MemoryReceiveChannel[Accepted]]:
        """Listens on a tunnel port (0: any); accepted connections arrive on
        the channel returned with the port."""
        port = self.stack.listen(port, backlog)
        send, receive = trio.open_memory_channel[Accepted](backlog + 64)
        self._listeners[port] = send
        return port, receive

    def close(self) -> None:
        """Ends every wait: the stack is gone (see the module notes)."""
        gone = OSError(errno.ENETDOWN, "the device stopped")
        for id_ in [*self._waiters, *self._detached]:
            self._failed(id_, gone)
        for channel in self._listeners.values():
            channel.close()
        self._listeners.clear()

    def unlisten(self, port: int) -> None:
        if channel := self._listeners.pop(port, None):
            channel.close()
            self.stack.unlisten(port)
