"""Which gateway process runs the timers and sweepers: one at a time.

The session limits (idle timeouts, max duration, the WhatsApp 24-hour window,
stale calls, the coexistence resume) and the outbox's expiry of uncertain parts
act on shared rows. With several processes on one PostgreSQL database, each
running them would double the work and race on the same sessions, so one
process leads and the others wait.

Leading is a PostgreSQL session-level advisory lock (`pg_try_advisory_lock`) held
on a connection of its own. No table, no clock: the lock lives exactly as long as
the leader's connection. A leader that dies (SIGKILL included) closes its socket
and PostgreSQL releases the lock at once; a leader's host that vanishes without a
word is noticed by PostgreSQL's TCP keepalives, which the leader sets short on its
connection, so another process leads within about `KEEPALIVE_BOUND_SECONDS`. The
others try every `interval` seconds. The leader checks its own connection as
often, and a check that fails or hangs makes it step down at once: it stops
acting before anyone else can take over.

On SQLite (one process, gateway/sqlite_owner.py) this process always leads.
Acting twice is still harmless where it matters: ending a session is idempotent
in the store (one `session.ended`), so the lock only removes duplicated work and
warnings during a hand-over, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("gateway.leadership")

LOCK_KEY = 7_270_002  # beside store/sql.py's event-append lock (7_270_001)
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
KEEPALIVE_BOUND_SECONDS = 5 + 2 * 3


class Leadership:
    def __init__(self, engine: AsyncEngine, *, interval: float = 2.0) -> None:
        self._engine = engine
        self._interval = interval
        self._pg = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None
        self._held = not self._pg  # SQLite: the only process
        self.changed = asyncio.Event()  # set on every gain or loss (tests, logs)

    @property
    def held(self) -> bool:
        return self._held

    def leads(self) -> bool:
        return self._held

    async def run(self) -> None:
        if not self._pg:
            return
        try:
            while True:
                try:
                    async with asyncio.timeout(self._interval * 2):
                        if self._conn is None:
                            await self._try_acquire()
                        else:
                            await self._check()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._lose(type(exc).__name__)
                await asyncio.sleep(self._interval)
        finally:
            await self._release()

    async def _try_acquire(self) -> None:
        conn = await self._engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for name, value in KEEPALIVE.items():
                await conn.execute(text(f"SET {name} = {int(value)}"))
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})).scalar()
        except BaseException:
            await _discard(conn)
            raise
        if not got:
            await conn.close()
            return
        self._conn = conn
        self._held = True
        self.changed.set()
        log.info("this instance now runs the timers and sweepers (leader)")

    async def _check(self) -> None:
        assert self._conn is not None
        await self._conn.execute(text("SELECT 1"))

    async def _lose(self, why: str) -> None:
        if self._held:
            log.warning("leadership lost (%s): timers and sweepers stop here", why)
            self._held = False
            self.changed.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await _discard(conn)  # never back into the pool: the lock may still be on it

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        was = self._held
        self._held = not self._pg
        if conn is None:
            return
        try:
            async with asyncio.timeout(2):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            await conn.close()
        except BaseException:
            await _discard(conn)
        if was:
            log.info("leadership released")


async def _discard(conn: AsyncConnection) -> None:
    """Close the connection for good (the server drops its session locks with it)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
