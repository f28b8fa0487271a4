"""Small concurrency helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


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
