"""The in-process backend: a dict of topic → subscriptions. One process only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from gateway.bus.base import Subscription


class MemoryBackend:
    def __init__(self) -> None:
        self._topics: dict[str, set[Subscription]] = {}

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        for subs in self._topics.values():
            for sub in subs:
                sub.close()
        self._topics.clear()

    async def ping(self) -> None:
        return None

    def publish(self, topic: str, payload: bytes) -> None:
        subs = self._topics.get(topic)
        if subs:
            for sub in tuple(subs):
                sub.push(payload)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str, maxsize: int) -> AsyncIterator[Subscription]:
        sub = Subscription(maxsize)
        self._topics.setdefault(topic, set()).add(sub)
        try:
            yield sub
        finally:
            sub.close()
            subs = self._topics.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._topics[topic]

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))
