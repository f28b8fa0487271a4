"""The bytes-level backend seam and the subscription type every backend returns.

A backend only moves opaque bytes between topics; it may drop messages (readers
resume from the store by `seq`), but it must never block a publisher on a slow
subscriber: each subscription has a bounded buffer and is cut loose when it fills.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class SubscriptionClosed(Exception):
    """The subscription ended: closed by the bus, or cut loose for falling behind."""

    def __init__(self, overflowed: bool) -> None:
        super().__init__("subscriber fell behind" if overflowed else "subscription closed")
        self.overflowed = overflowed


class Subscription:
    """A bounded buffer of messages for one subscriber."""

    __slots__ = ("_items", "_maxsize", "_waiter", "closed", "overflowed")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[bytes] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.closed = False

    def push(self, item: bytes) -> None:
        """Called by the backend; never blocks."""
        if self.closed:
            return
        if len(self._items) >= self._maxsize:
            self.overflowed = self.closed = True
            self._items.clear()
        else:
            self._items.append(item)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pending(self) -> int:
        return len(self._items)

    def get_nowait(self) -> bytes | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> bytes:
        while not self._items:
            if self.closed:
                raise SubscriptionClosed(self.overflowed)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return


class Backend(Protocol):
    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> None:
        """Never blocks: network backends queue internally and send in call order."""

    def subscribe(self, topic: str, maxsize: int) -> AbstractAsyncContextManager[Subscription]: ...

    async def ping(self) -> None: ...
