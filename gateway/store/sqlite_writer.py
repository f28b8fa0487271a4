"""The SQLite writer's connection: the standard library's sqlite3, called on the event loop.

Reads go through aiosqlite, which runs each DBAPI call (cursor, execute, fetch, close)
on its worker thread: ~4 thread hops and GIL hand-offs per statement. For reads that is
what keeps a long query (an export, a history page) off the event loop. For the writer
it was the bottleneck: a batch of a dozen statements cost ~50 hops, and every durable
answer (a webhook's 200, a chat frame) waits for its batch (bench/README.md profiles).

The writer's statements are small (set-wise, a few per batch) and WAL commits do not
fsync (`synchronous=NORMAL`), so running them synchronously on the loop costs less than
the hops around them. This module gives SQLAlchemy's asyncio layer a dialect whose DBAPI
is plain sqlite3: each statement runs inside the greenlet SQLAlchemy already uses,
without a thread and without a switch back to the loop.

Why this is safe: on SQLite one process owns the file (gateway/sqlite_owner.py) and every
write of that process goes through the one writer (gateway/store/writer.py), so the
writer's connection never waits for another connection's write lock held by a
transaction that needs this loop to finish (WAL readers never block a writer). A command
line tool writing the same file briefly (`gateway keys`) only makes it wait up to
`busy_timeout`, as any SQLite writer would. Checkpoints run on aiosqlite's thread
(`checkpoint()`), not on the loop: the writer's connection has automatic checkpoints off.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool

DRIVER = "loopsqlite"
# The writer holds a connection for one batch at a time; a second is for a job run alone
# after a batch failed while the first is being returned.
POOL_SIZE = 2


class _Cursor(sqlite3.Cursor):
    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio layer closes an async driver's cursor here; a sqlite3
        cursor's rows are read synchronously, so there is nothing to do."""


class _Connection(sqlite3.Connection):
    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


class LoopSQLiteDialect(SQLiteDialect_pysqlite):
    """pysqlite, usable from `create_async_engine`: statements run inline in the greenlet."""

    is_async = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[Pool]:
        return AsyncAdaptedQueuePool


def create_write_engine(url: str) -> AsyncEngine:
    """An engine for the writer of the SQLite file `url` names (sqlite+aiosqlite:///path)."""
    registry.register(f"sqlite.{DRIVER}", __name__, "LoopSQLiteDialect")
    parsed = make_url(url).set(drivername=f"sqlite+{DRIVER}")
    engine = create_async_engine(
        parsed,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        # Created on the loop's thread; returned to the pool (and closed at dispose) from
        # wherever the pool runs that, which sqlite3's same-thread check would refuse.
        connect_args={"check_same_thread": False, "timeout": 30, "factory": _Connection},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # A checkpoint syncs the WAL and the database file: not on the loop (see checkpoint()).
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    return engine
