"""A per-tenant cap on turns running at once (`server.tenant_max_concurrent_turns`).

One tenant's flood queues behind its own cap and never takes every worker from the
others. Nothing is refused: a turn over the cap waits for a slot (its messages are
already stored and stay pending, so a restart picks them up as before).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TenantGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str | None) -> AsyncIterator[None]:
        if self.limit <= 0:
            yield
            return
        key = tenant or ""
        sem = self._slots.get(key)
        if sem is None:
            sem = self._slots[key] = asyncio.Semaphore(self.limit)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with sem:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # idle tenants cost nothing
                del self._users[key], self._slots[key]

    def running(self, tenant: str | None) -> int:
        sem = self._slots.get(tenant or "")
        return 0 if sem is None else self.limit - sem._value
