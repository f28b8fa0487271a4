"""Engine construction and schema (migration) management."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.errors import DatabaseUnavailable, SchemaOutOfDate

__all__ = [
    "DatabaseUnavailable",
    "SchemaOutOfDate",
    "create_engine",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "upgrade",
]
T = TypeVar("T")
# A host that drops packets must not hold the start for asyncpg's default 60 s.
CONNECT_TIMEOUT_SECONDS = 10

# Shipped inside the package (gateway/migrations), so an installed wheel can migrate.
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int | None = None) -> AsyncEngine:
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
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=True,
        # asyncpg prepares each distinct statement once per connection and keeps 100; the
        # set-wise statements differ by the length of their IN lists, so 100 thrashed
        # (a prepare is a round trip and a parse on the server) under load.
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS, "prepared_statement_cache_size": 1000},
    )


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (None for an in-memory database)."""
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def describe_unavailable(url: str, exc: BaseException) -> str:
    """One line: `database_url`, where it points, what went wrong, what to do."""
    parsed = make_url(url)
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None and not path.parent.exists():
            reason = f"the directory {path.parent} does not exist"
        else:
            reason = next((str(e) for e in chain if isinstance(e, sqlite3.Error)), type(exc).__name__)
        return (
            f"database_url: cannot open the SQLite file {path} ({reason}): "
            "create the directory or correct the path in database_url"
        )
    host, port = parsed.host or "localhost", parsed.port or 5432
    where = f"PostgreSQL at {host}:{port}"
    names = {type(e).__name__ for e in chain}
    if "InvalidCatalogNameError" in names:
        name, user = parsed.database or "", parsed.username or "postgres"
        return (
            f'database_url: {where} has no database "{name}": create it '
            f"(createdb -h {host} -p {port} -U {user} {name}) or correct the name in database_url"
        )
    if names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        detail = next(
            str(e)
            for e in chain
            if type(e).__name__ in names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}
        )
        return (
            f'database_url: {where} refused user "{parsed.username or ""}" ({detail}): '
            "correct the user and password in database_url"
        )
    if any(isinstance(e, socket.gaierror) for e in chain):
        reason = "unknown host"
    elif any(isinstance(e, ConnectionRefusedError) for e in chain):
        reason = "connection refused"
    elif any(isinstance(e, TimeoutError) for e in chain):
        reason = f"no answer within {CONNECT_TIMEOUT_SECONDS} s"
    elif any(isinstance(e, OSError) for e in chain):
        reason = next(str(e) for e in chain if isinstance(e, OSError))
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return (
            f"database_url: cannot use {where} ({type(exc).__name__}: {first}): "
            "check database_url and that the server accepts this user"
        )
    return (
        f"database_url: cannot connect to {where} ({reason}): "
        "start the database or correct the host and port in database_url"
    )


async def reachable(url: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run the first database work of a command; a failure to connect becomes one clear line."""
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not path.parent.is_dir():
        # Said before the driver tries: its worker thread would print a traceback of its own.
        raise DatabaseUnavailable(describe_unavailable(url, FileNotFoundError(path.parent)))
    try:
        return await work()
    except (SchemaOutOfDate, DatabaseUnavailable):
        raise
    except Exception as exc:
        raise DatabaseUnavailable(describe_unavailable(url, exc)) from exc


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    return (await _schema_state(engine))[0]


async def _schema_state(engine: AsyncEngine) -> tuple[str | None, bool]:
    """The schema's revision, and whether the database has no tables at all."""

    def _read(conn: Connection) -> tuple[str | None, bool]:
        revision = MigrationContext.configure(conn).get_current_revision()
        return revision, not inspect(conn).get_table_names()

    async with engine.connect() as conn:
        return await conn.run_sync(_read)


async def upgrade(url: str, revision: str = "head") -> None:
    # Alembic's command API is synchronous and its async env.py runs its own loop:
    # give it a thread so the caller's loop keeps running.
    await reachable(url, lambda: asyncio.to_thread(command.upgrade, alembic_config(url), revision))


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def ensure_schema(engine: AsyncEngine, url: str, *, migrate: bool) -> None:
    """Create the schema in an empty database; upgrade an older one only when asked to.

    An empty database (no tables) is the first start: it is always migrated. An
    existing schema at another revision is refused unless `migrate` is set, so an
    upgrade of the gateway never changes a database without the operator saying so.
    """
    head = head_revision()
    current, empty = await reachable(url, lambda: _schema_state(engine))
    if current == head:
        return
    if migrate or (current is None and empty):
        await upgrade(url)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {current or 'none'}, this gateway needs {head}: "
        "run `gateway migrate` (or start with `gateway serve --migrate`)"
    )
