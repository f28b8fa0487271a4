"""Engine construction and schema (migration) management."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.errors import SchemaOutOfDate

__all__ = ["SchemaOutOfDate", "create_engine", "current_revision", "downgrade", "ensure_schema", "upgrade"]

# Shipped inside the package (gateway/migrations), so an installed wheel can migrate.
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL + NORMAL survives a process crash (a power loss may cost the last
            # commits); busy_timeout lets a second process wait instead of failing.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_read)


async def upgrade(url: str, revision: str = "head") -> None:
    # Alembic's command API is synchronous and its async env.py runs its own loop:
    # give it a thread so the caller's loop keeps running.
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def ensure_schema(engine: AsyncEngine, url: str, *, migrate: bool) -> None:
    """Upgrade when asked to; otherwise refuse to run on an out-of-date schema."""
    head = head_revision()
    current = await current_revision(engine)
    if current == head:
        return
    if migrate:
        await upgrade(url)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {current or 'none'}, this gateway needs {head}: "
        "run `gateway migrate` (or start with `gateway serve --migrate`)"
    )
