"""Timers and sweepers have one owner at a time across processes (issue 14, item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from sqlalchemy import text

from gateway.leadership import LOCK_KEY, Leadership
from gateway.store.db import create_engine, ensure_schema
from gateway.store.sql import Store
from gateway.types import Channel
from tests.conftest import make_settings, mint, reset_postgres, run_gateway
from tests.services import PG_URL, need_postgres, redis_bus_url


@pytest.fixture
async def pg() -> str:
    need_postgres()
    await reset_postgres()
    return PG_URL


@contextlib.asynccontextmanager
async def leader(url: str, interval: float = 0.1) -> AsyncIterator[Leadership]:
    engine = create_engine(url)
    lead = Leadership(engine, interval=interval)
    task = asyncio.create_task(lead.run())
    try:
        yield lead
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()


async def until(cond: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_one_leader_and_another_takes_over_when_its_connection_dies(pg: str) -> None:
    async with leader(pg) as a:
        await until(lambda: a.held)
        async with leader(pg) as b:
            await asyncio.sleep(0.5)
            assert a.held and not b.held
            # The leader's backend dies (what PostgreSQL sees when its process is killed).
            admin = create_engine(pg)
            async with admin.connect() as conn:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND objid = :k AND granted"
                    ),
                    {"k": LOCK_KEY},
                )
            await admin.dispose()
            await until(lambda: b.held and not a.held, timeout=5)
        # b stopped cleanly: the lock is released at once, and a leads again.
        await until(lambda: a.held, timeout=5)


async def test_sqlite_always_leads(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    assert Leadership(engine).held
    await engine.dispose()


async def test_ending_one_session_from_two_processes_at_once_emits_one_ended(pg: str) -> None:
    engines = [create_engine(pg) for _ in range(2)]
    await ensure_schema(engines[0], pg, migrate=True)
    stores = [Store(e) for e in engines]
    await stores[0].sync_agents({"demo": {"answer": "echo"}})
    try:
        for round_ in range(5):
            session, _ = await stores[0].start_session(agent_id="demo", channel=Channel.CHAT)
            await asyncio.gather(
                *(s.end_session(session.id, "idle_timeout") for s in stores for _ in range(3))
            )
            ended = await stores[1].events_after(0, session_id=session.id, types=["session.ended"])
            assert len(ended) == 1, round_
    finally:
        for e in engines:
            await e.dispose()


async def test_two_instances_warn_and_end_an_idle_session_once(pg: str) -> None:
    limits = {"idle_timeout_seconds": 2.0, "idle_warning_seconds": 1.2, "idle_grace_seconds": 0.5}
    agents = {"demo": {"answer": "echo", "echo_delay_ms": 0, "limits": limits}}
    bus = redis_bus_url(uuid.uuid4().hex)
    server = {"limits_sweep_seconds": 0.05, "leader_check_seconds": 0.2, "bus_url": bus}
    async with run_gateway(make_settings(pg, agents=agents, server=server)) as a:
        async with run_gateway(make_settings(pg, agents=agents, server=server)) as b:
            await until(lambda: a.runtime.leadership.held or b.runtime.leadership.held)
            assert not (a.runtime.leadership.held and b.runtime.leadership.held)
            follower = b if a.runtime.leadership.held else a
            sids = []
            for _ in range(3):  # sessions opened on the follower
                async with websockets.connect(
                    f"{follower.ws_url}/chat/ws?token={await mint(follower)}"
                ) as ws:
                    sids.append(json.loads(await ws.recv())["sessionId"])
                    await ws.send(json.dumps({"event": "message", "text": "hello"}))
                    async with asyncio.timeout(10):
                        while json.loads(await ws.recv())["event"] != "chat.done":
                            pass
            store = a.runtime.store

            async def ended_all() -> bool:
                got = await store.events_after(0, types=["session.ended"])
                return len(got) >= len(sids)

            async with asyncio.timeout(15):
                while not await ended_all():
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # time for a second sweeper to act, if there were one
            for sid in sids:
                kinds = [e.type for e in await store.events_after(0, session_id=sid)]
                warnings = [
                    e for e in await store.events_after(0, session_id=sid) if e.type == "session.idleWarning"
                ]
                # One final warning, at most one before it (a sweep late under load may skip it):
                # a second sweeper would have doubled them.
                assert sum(1 for w in warnings if w.data.get("final")) == 1, kinds
                assert sum(1 for w in warnings if not w.data.get("final")) <= 1, kinds
                assert kinds.count("session.ended") == 1 and kinds.count("session.timeout") == 1, kinds


async def test_leader_stopping_hands_over_to_the_other(pg: str) -> None:
    server = {"leader_check_seconds": 0.1}
    async with run_gateway(make_settings(pg, server=server)) as a:
        await until(lambda: a.runtime.leadership.held)
        async with run_gateway(make_settings(pg, server=server)) as b:
            await asyncio.sleep(0.3)
            assert not b.runtime.leadership.held
            await a.stop()
            await until(lambda: b.runtime.leadership.held, timeout=5)
