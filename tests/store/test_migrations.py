"""Migrations on the real databases: upgrade → downgrade → upgrade, and no drift from the models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway.store import db
from gateway.store.models import Base

TABLES = {
    "agents",
    "api_keys",
    "browser_tokens",
    "contacts",
    "sessions",
    "messages",
    "events",
    "outbox",
    "turn_leases",
}


async def _tables(url: str) -> set[str]:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    return names - {"alembic_version"}


async def _diff(url: str) -> list[object]:
    engine = db.create_engine(url)

    def compare(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    await db.upgrade(db_url)
    assert await _tables(db_url) == TABLES
    await db.downgrade(db_url, "base")
    assert await _tables(db_url) == set()
    await db.upgrade(db_url)
    assert await _tables(db_url) == TABLES


async def test_models_match_migrations(db_url: str) -> None:
    await db.upgrade(db_url)
    assert await _diff(db_url) == []


async def test_an_empty_database_is_set_up_and_an_older_schema_refused(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        # A new, empty database: the first start creates the schema, whatever the setting.
        await db.ensure_schema(engine, db_url, migrate=False)
        assert await db.current_revision(engine) == db.head_revision()
        # An older gateway's schema is refused until migrating is asked for.
        await db.downgrade(db_url, "0002")
        try:
            await db.ensure_schema(engine, db_url, migrate=False)
        except db.SchemaOutOfDate as exc:
            assert exc.message.startswith("the database schema is at revision 0002, this gateway needs ")
            assert "run `gateway migrate`" in exc.message
        else:
            raise AssertionError("an older schema must be refused")
        await db.ensure_schema(engine, db_url, migrate=True)
        assert await db.current_revision(engine) == db.head_revision()
        await db.ensure_schema(engine, db_url, migrate=False)  # now current: no error
    finally:
        await engine.dispose()


async def test_migrate_runs_from_a_running_loop(sqlite_url: str) -> None:
    # `gateway serve --migrate` upgrades from inside the server's event loop.
    await asyncio.wait_for(db.upgrade(sqlite_url), 30)
    assert await _tables(sqlite_url) == TABLES
