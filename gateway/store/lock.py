"""The store's write lock: first come, first served, except that outbox writes go first.

Writers in one process take turns (see `store.sql`). A burst of thousands of turns
would otherwise queue every outbox claim and send outcome behind all of their
writes, so no reply would leave until the burst's turns were done. Outbox writes are
few and short; letting them jump the queue makes replies leave while turns still
run, and delays a turn's write by at most a few outbox statements.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class WriteLock:
    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._held and not self._urgent and not self._normal:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # it was handed the lock just as it was cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the lock straight to the next waiter (urgent first), or free it."""
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._held = False
