"""The event log: append (with commit-ordered `seq`) and read from a `seq` on."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import Event
from gateway.store.core import StoreCore
from gateway.store.models import (
    EventRow,
)
from gateway.store.rows import (
    _event,
)


class EventsRepo(StoreCore):
    async def append_events(self, events: Iterable[Event]) -> list[Event]:
        async def job(s: AsyncSession) -> list[Event]:
            return await self._append(s, events)

        return await self._writer.run(job)

    async def events_after(
        self,
        seq: int,
        *,
        agents: Iterable[str] | None = None,
        session_id: str | None = None,
        types: Iterable[str] | None = None,
        limit: int = 500,
    ) -> list[Event]:
        q = select(EventRow).where(EventRow.seq > seq).order_by(EventRow.seq).limit(limit)
        if agents is not None:
            q = q.where(EventRow.agent_id.in_(list(agents)))
        if session_id is not None:
            q = q.where(EventRow.session_id == session_id)
        if types is not None:
            q = q.where(EventRow.type.in_(list(types)))
        async with self._read() as s:
            rows = (await s.scalars(q)).all()
        return [_event(r) for r in rows]

    async def last_seq(self) -> int:
        async with self._read() as s:
            return int((await s.scalar(select(func.max(EventRow.seq)))) or 0)
