"""Small concurrency helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("gateway.tasks")


async def first_completed(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run coroutines together; when the first finishes, cancel the rest.

    The duplex-connection pattern (a reader, a writer, a shutdown watcher): one
    task group per connection, and no pump outlives its connection. An exception
    from the finished task is re-raised after the others are cancelled.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc


async def supervised(
    name: str,
    work: Callable[[], Coroutine[Any, Any, None]],
    *,
    stopping: asyncio.Event,
    backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0),
) -> None:
    """Run a background worker for the life of the process: if it dies of an exception
    (the database went away under it), log it and start it again after a pause.

    A worker that returns, or any worker once the server is stopping, is not restarted.
    """
    failures = 0
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping.is_set():
                return
            pause = backoff[min(failures, len(backoff) - 1)]
            failures += 1
            log.warning("%s stopped (%s: %s); restarting in %.1f s", name, type(exc).__name__, exc, pause)
            await asyncio.sleep(pause)
