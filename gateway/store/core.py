"""The store's shared layer: one writer (group commit), reads, the event log, hot state.

Every repository (`events`, `agents`, `credentials`, `ingest`, `sessions`,
`session_life`, `messages`, `replies`, `outbox`, `pricing`) is a class over this core;
`gateway.store.sql.Store` is all of them in one object, so callers hold one store.

Writes are jobs of the writer (gateway/store/writer.py): what queued up commits in one
transaction, each caller answered after its own commit. Writes that create events
append them in the same transaction with their commit-ordered `seq` (on PostgreSQL
under the transaction-level advisory lock, once per batch), and the writer hands them
to the bus after the commit, in `seq` order: store first, then publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway import ids
from gateway.events import ContactRef, Event, now_ms
from gateway.store.db import sqlite_path
from gateway.store.hot import HotSessions
from gateway.store.models import (
    AgentRow,
    ContactRow,
    EventRow,
    SessionRow,
)
from gateway.store.records import (
    Ingested,
)
from gateway.store.rows import (
    _chunks,
    _paused_for,
    _session_row,
    _tenant_of,
)
from gateway.store.sqlite_writer import create_write_engine
from gateway.store.writer import Writer, after_commit, lock_event_log
from gateway.types import Channel

log = logging.getLogger("gateway.store")
EVENTS = cast(Table, EventRow.__table__)  # Core: an executemany, without the ORM bulk machinery

if TYPE_CHECKING:
    from gateway.store.ingest import _IngestGroup
    from gateway.store.outbox import OutboxQueries
    from gateway.store.pricing import PricingQueries


class _Checkpoints:
    """SQLite: WAL checkpoints on aiosqlite's thread, at most one a second, after writes.

    The writer's own connection has automatic checkpoints off: one syncs the WAL and the
    database file, which must not happen on the event loop (gateway/store/sqlite_writer.py).
    """

    INTERVAL = 1.0

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def due(self) -> None:
        now = time.monotonic()
        if now - self._last < self.INTERVAL or (self._task is not None and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-checkpoint")

    async def _run(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # the next one catches up; a write never waits for this
            log.warning("a SQLite checkpoint failed", exc_info=True)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)


class StoreCore:
    """The layer every repository shares: the engine, the one writer, reads, the event
    log's append and the hot state (gateway/store/hot.py)."""

    # Set by `gateway.store.sql.Store`, which has every repository.
    _ingest: _IngestGroup
    outbox: OutboxQueries
    pricing: PricingQueries

    def __init__(self, engine: AsyncEngine, on_commit: Callable[[list[Event]], None] | None = None) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._pg = engine.dialect.name == "postgresql"
        # SQLite file: the writer runs its statements on the loop through sqlite3, not
        # aiosqlite's thread (gateway/store/sqlite_writer.py); reads stay on aiosqlite.
        self._write_engine: AsyncEngine | None = None
        self._checkpoints = _Checkpoints(engine)
        if not self._pg and sqlite_path(str(engine.url)) is not None:
            self._write_engine = create_write_engine(engine.url.render_as_string(hide_password=False))
        writes = self._sessions
        if self._write_engine is not None:
            writes = async_sessionmaker(self._write_engine, expire_on_commit=False)
        self._writer = Writer(
            writes,
            postgres=self._pg,
            on_commit=on_commit,
            after_batch=self._checkpoints.due if self._write_engine else None,
        )
        self.hot = HotSessions()
        # Several instances (set by the composition root): a reply is stored only if every
        # message it answers is still pending, so a turn that outlived its lease (a stalled
        # process) never answers a message another instance answered meanwhile.
        self.fence_replies = False

    @property
    def on_commit(self) -> Callable[[list[Event]], None] | None:
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, value: Callable[[list[Event]], None] | None) -> None:
        self._writer.on_commit = value

    @property
    def writer(self) -> Writer:
        return self._writer

    @property
    def write_engine(self) -> AsyncEngine:
        """The engine the writer commits through (on a SQLite file, not `engine`)."""
        return self._write_engine or self.engine

    async def close(self) -> None:
        await self._writer.close()
        await self._checkpoints.close()
        if self._write_engine is not None:
            await self._write_engine.dispose()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as s:
            yield s

    async def _append(self, s: AsyncSession, events: Iterable[Event]) -> list[Event]:
        events = list(events)
        if not events:
            return []
        await lock_event_log(s)
        # Core, not ORM objects: one multi-row INSERT … RETURNING seq, in the events' order.
        rows = [
            {
                "ts": e.ts,
                "type": str(e.type),
                "agent_id": e.agent,
                "session_id": e.session_id,
                "channel": e.channel,
                "data": dict(e.data),
            }
            for e in events
        ]
        if self._pg or len(rows) == 1:
            returning = insert(EventRow).returning(EventRow.seq, sort_by_parameter_order=True)
            seqs = list((await s.execute(returning, rows)).scalars())
        else:
            # Several rows: SQLite cannot promise RETURNING's order, so SQLAlchemy would send
            # one INSERT per event. One executemany instead: the writer holds SQLite's only
            # write lock, so the rows take consecutive rowids in order, ending at
            # last_insert_rowid().
            await s.execute(insert(EVENTS), rows)
            last = int(await s.scalar(text("SELECT last_insert_rowid()")) or 0)
            seqs = list(range(last - len(rows) + 1, last + 1))
        stored = [e.with_seq(seq) for e, seq in zip(events, seqs, strict=True)]
        s.info.setdefault("events", []).extend(stored)
        return stored

    def _hot_ingested(self, s: AsyncSession, result: Ingested | None, version: int, started: bool) -> None:
        if result is None or result.message is None:
            return
        session, message = result.session, result.message
        after_commit(s, lambda: self.hot.ingested(session, message, version, version + 1, started=started))

    def _touched(self, s: AsyncSession, session_ids: Iterable[str]) -> None:
        """After the commit, forget this process's hot state of these sessions."""
        sids = list(session_ids)
        if sids:
            after_commit(s, lambda: self.hot.drop(sids))

    async def _bump(self, s: AsyncSession, session_ids: Iterable[str]) -> None:
        """A write to sessions or their messages outside the hot paths: bump their version
        (another process's hot state notices) and drop this process's (gateway/store/hot.py)."""
        sids = sorted(set(session_ids))
        if not sids:
            return
        for chunk in _chunks(sids):
            await s.execute(
                update(SessionRow).where(SessionRow.id.in_(chunk)).values(version=SessionRow.version + 1)
            )
        self._touched(s, sids)

    async def _contact(self, s: AsyncSession, ref: ContactRef, agent_id: str) -> ContactRow:
        """The agent's tenant's contact for `ref` (each tenant has its own contact rows)."""
        tenant = await _tenant_of(s, agent_id)
        row = await s.scalar(
            select(ContactRow).where(
                ContactRow.tenant == tenant,
                ContactRow.channel == str(ref.channel),
                ContactRow.address == ref.address,
            )
        )
        if row is None:
            row = ContactRow(
                id=ids.contact_id(),
                tenant=tenant,
                channel=str(ref.channel),
                address=ref.address,
                name=ref.name,
                paused_agents=[],
                created_at=now_ms(),
            )
            s.add(row)
            await s.flush()
        elif ref.name and row.name != ref.name:
            row.name = ref.name
        return row

    async def _new_session(
        self,
        s: AsyncSession,
        *,
        agent_id: str,
        channel: Channel,
        contact: ContactRow | None,
        direction: str,
        meta: dict[str, Any],
        session_id: str | None,
        now: int,
        endpoint: str | None = None,
    ) -> tuple[SessionRow, Event]:
        paused = _paused_for(await s.get(AgentRow, agent_id), contact)
        row, started = _session_row(
            agent_id=agent_id,
            channel=channel,
            contact=contact,
            direction=direction,
            meta=meta,
            session_id=session_id,
            now=now,
            endpoint=endpoint,
            paused=paused,
        )
        s.add(row)
        await s.flush()
        return row, started
