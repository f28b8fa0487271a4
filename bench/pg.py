"""Scratch PostgreSQL databases for the benchmarks' PostgreSQL rows.

Each measurement gets a database of its own, created before the server starts and
dropped afterwards: `bench_pg_<pid>_<n>` on the server of `BENCH_PG_URL` (default
`postgresql://postgres@127.0.0.1:5432/postgres`, the machine's local PostgreSQL).
Without a reachable server the PostgreSQL rows are skipped and say so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_SERIAL = itertools.count()


def _with_db(url: str, name: str, *, driver: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0] + (f"+{driver}" if driver else "")
    return urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def available() -> str | None:
    """None when PostgreSQL answers, else why not (printed beside the skipped rows)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(_with_db(ADMIN_URL, "postgres"), timeout=5)
    except Exception as exc:  # any failure means: no PostgreSQL rows in this run
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh, empty database for one measurement; yields its SQLAlchemy (asyncpg) URL."""
    import asyncpg

    name = f"bench_pg_{os.getpid()}_{next(_SERIAL)}"
    admin = _with_db(ADMIN_URL, "postgres")
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_db(ADMIN_URL, name, driver="asyncpg")
    finally:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
