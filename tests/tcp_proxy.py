"""A TCP forwarder on loopback, run inside a test's Trio loop, that can cut
or freeze the path between a client and etcd while etcd itself stays up.

- `cut()`: every connection is closed and new ones are closed at once (a
  client sees its watch end and its connections refused or reset);
- `freeze()`: connections stay open but nothing is forwarded any more (a
  client sees silence, as behind a dead link);
- `restore()`: new connections are forwarded again.
"""

from __future__ import annotations

import trio


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._mode = "forward"
        self._scopes: set[trio.CancelScope] = set()
        self._frozen = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, trio.open_nursery() as nursery:
            self._scopes.add(nursery.cancel_scope)
            try:
                if self._mode == "cut":
                    return  # closed at once
                if self._mode == "frozen":
                    await trio.sleep_forever()  # accepted, never answered
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with server:
                    nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                    await self._pump(server, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        """Copies until either side closes, then closes the whole connection."""
        try:
            while data := await source.receive_some(65536):
                while self._mode == "frozen":
                    await trio.sleep(0.05)  # hold the bytes: a silent path
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def cut(self) -> None:
        self._mode = "cut"
        for scope in list(self._scopes):
            scope.cancel()

    def freeze(self) -> None:
        self._mode = "frozen"

    def restore(self) -> None:
        self._mode = "forward"
