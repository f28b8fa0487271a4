"""Turn leases on the real PostgreSQL: two turn runners (two "instances", each with its own
engine and owner) never run one session's turns at once, and a message that came to the
one that did not hold the lease is answered by the owner's next turn."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.store.db import ensure_schema
from gateway.turn_lease import SharedLeases
from gateway.turns import TurnRunner
from tests.conftest import reset_postgres
from tests.services import PG_URL, need_postgres


@pytest.fixture
async def engines() -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    need_postgres()
    await reset_postgres()
    a, b = create_async_engine(PG_URL), create_async_engine(PG_URL)
    await ensure_schema(a, PG_URL, migrate=True)
    yield a, b
    await a.dispose()
    await b.dispose()


def leases(engine: AsyncEngine, owner: str, stale: list[str], ttl: float = 5.0) -> SharedLeases:
    return SharedLeases(engine, owner, ttl_seconds=ttl, stale=lambda sid, _v: stale.append(sid))


async def test_two_instances_never_run_one_sessions_turns_at_once(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    running: dict[str, str] = {}
    overlaps: list[str] = []
    # The "messages": a submit's number; a turn answers every one submitted before it started.
    submitted: dict[str, int] = {}
    answered: dict[str, int] = {}

    def turn(owner: str):  # type: ignore[no-untyped-def]
        async def run(session_id: str) -> None:
            if session_id in running:
                overlaps.append(f"{session_id}: {owner} while {running[session_id]}")
            running[session_id] = owner
            seen = submitted[session_id]
            await asyncio.sleep(random.uniform(0.001, 0.02))
            answered[session_id] = max(answered.get(session_id, 0), seen)
            del running[session_id]

        return run

    stale: list[str] = []
    a = TurnRunner(turn("A"), leases=leases(engines[0], "A", stale))
    b = TurnRunner(turn("B"), leases=leases(engines[1], "B", stale))
    sessions = [f"s{i}" for i in range(10)]
    for _ in range(40):
        for sid in random.sample(sessions, 5):
            submitted[sid] = submitted.get(sid, 0) + 1
            random.choice((a, b)).submit(sid)  # committed, then submitted where it arrived
        await asyncio.sleep(random.uniform(0, 0.01))
    async with asyncio.timeout(20):
        while answered != submitted or running or a._workers or b._workers:
            await asyncio.sleep(0.02)
    assert overlaps == []
    assert answered == submitted  # every message answered by a turn that started after it
    assert stale  # a process that ran after another process's message read the store again
    async with engines[0].connect() as c:
        assert (await c.scalar(text("SELECT count(*) FROM turn_leases"))) == 0  # all let go


async def test_a_dead_owners_lease_expires_and_another_instance_claims_it(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    dead = leases(engines[0], "dead", [], ttl=1.0)
    alive = leases(engines[1], "alive", [], ttl=1.0)
    assert await dead.claim("s1")
    assert not await alive.claim("s1")  # held: marked for the owner instead
    await asyncio.sleep(1.1)  # the dead one never renews
    assert await alive.claim("s1")
    assert not await alive.release("s1")  # nobody marked it since
    # A live owner's renewals keep it: the other waits.
    assert await alive.claim("s2")
    for _ in range(3):
        await asyncio.sleep(0.5)
        await alive.renew()
        assert not await dead.claim("s2")
    assert await alive.release("s2")  # marked by those claims: run once more
    assert not await alive.release("s2")


async def test_a_released_lease_is_not_renewed_and_claims_together_are_one_statement(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine = engines[0]
    a = leases(engine, "a", [])
    sids = [f"s-{i}" for i in range(20)]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "turn_leases" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        assert all(await asyncio.gather(*(a.claim(s) for s in sids)))
        claims = len(statements)
        assert not any(await asyncio.gather(*(a.release(s) for s in sids)))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    # 20 claims at once: far fewer statements than claims (the first goes alone, the
    # rest queue up behind it), and every released lease is off the renewal list.
    assert claims <= 3, claims
    assert a.held() == frozenset()
