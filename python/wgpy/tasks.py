"""Trio helpers for wgpy's context managers.

`background_tasks()`: a nursery for the tasks a context manager runs while
its caller's `async with` body runs. The tasks are cancelled when the body
ends. An exception raised by the body comes out as itself, not wrapped in
an ExceptionGroup (Trio's nurseries group every exception they see, the
body's included, since strict exception groups became the default): the
caller of `async with wgpy.Device(...)` can catch what its own code raised.
Failures of the background tasks still come out as a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def background_tasks() -> AsyncIterator[trio.Nursery]:
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as e:
                body_error = e
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is not None and list(group.exceptions) == [body_error]:
            raise body_error from None
        raise
