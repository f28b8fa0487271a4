"""Redis or PostgreSQL going away under running gateways (issue 14, item 8).

The outage is a TCP proxy the test cuts (tests/multi/proxy.py): the shared services
keep running for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from gateway.bus.redis import RedisBackend
from gateway.store.sql import SessionQuery
from tests.conftest import ADMIN, Running, SseReader, make_settings, reset_postgres, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.multi.proxy import TcpProxy, tcp_proxy
from tests.multi.test_redis_bus import chat, read_until
from tests.services import PG_URL, REDIS_URL, need_postgres, redis_bus_url
from tests.whatsapp.test_channel import ENV, number, post, text_webhook

AUTH = {"authorization": f"Bearer {ADMIN}"}


def via(url: str, proxy: TcpProxy) -> str:
    parsed = make_url(url)
    return parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def settings(db: str, graph: FakeGraph, bus: str = "memory://", **server: Any) -> Any:
    agents = {
        "demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]},
        "support": {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)]},
    }
    server = {
        "bus_url": bus,
        "bus_catch_up_seconds": 0.2,
        "outbox_poll_seconds": 0.05,
        "outbox_retry_base_seconds": 0.05,
        **server,
    }
    return make_settings(db, agents=agents, server=server)


async def until(cond: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def ready(g: Running) -> httpx.Response:
    async with g.client() as c:
        return await c.get("/readyz")


@pytest.fixture
async def pg() -> str:
    need_postgres()
    await reset_postgres()
    return PG_URL


@contextlib.asynccontextmanager
async def two(db: str, graph: FakeGraph, bus: str) -> AsyncIterator[tuple[Running, Running]]:
    async with run_gateway(settings(db, graph, bus), env=ENV) as a:
        async with run_gateway(settings(db, graph, bus), env=ENV) as b:
            yield a, b


async def test_redis_outage_loses_nothing_and_feeds_catch_up(pg: str) -> None:
    channel = redis_bus_url(uuid.uuid4().hex)
    async with tcp_proxy("127.0.0.1", make_url(REDIS_URL).port or 6379) as redis:
        bus = via(channel, redis)
        async with FakeGraph(token="test-token") as graph, two(pg, graph, bus) as (a, b):
            async with httpx.AsyncClient(base_url=b.url, headers=AUTH, timeout=10) as c:
                async with c.stream("GET", "/v1/events") as r:
                    feed = SseReader(r)
                    await feed.next()
                    await chat(a, ["before"])

                    await redis.cut()
                    backends = [g.runtime.bus.backend for g in (a, b)]
                    assert all(isinstance(x, RedisBackend) for x in backends)

                    async def both_down() -> bool:
                        return not any(x.connected for x in backends)  # type: ignore[union-attr]

                    await until(both_down)
                    r_a = await ready(a)
                    assert r_a.status_code == 200 and r_a.json()["status"] == "degraded"

                    # Accepted and stored, answered (the turn runs, the outbox sends), on A.
                    assert (await post(a, text_webhook("wamid.OUTAGE1", "during"))).status_code == 200
                    assert (
                        await post(b, text_webhook("wamid.OUTAGE2", "also", sender="16505550002"))
                    ).status_code == 200
                    await chat(a, ["during the outage"])  # the socket's own events are local

                    async def answered() -> bool:
                        return len(graph.sent) == 2

                    await until(answered)
                    stored = await a.runtime.store.events_after(0, limit=10_000)
                    # B's feed has A's events from the store while Redis is down.
                    frames = await read_until(feed, stored[-1].seq or 0)

                    await redis.restore()

                    async def both_up() -> bool:
                        return all(x.connected for x in backends)  # type: ignore[union-attr]

                    await until(both_up)
                    assert (await ready(a)).json()["status"] == "ok"
                    await chat(a, ["after"])
                    stored = await a.runtime.store.events_after(0, limit=10_000)
                    frames += await read_until(feed, stored[-1].seq or 0)
        assert [int(f["id"]) for f in frames] == [e.seq for e in stored]  # nothing lost, nothing twice
        assert sorted(m["text"]["body"] for m in graph.sent) == ["also", "during"]


async def test_postgres_outage_webhooks_get_503_never_200_and_nothing_is_lost(pg: str) -> None:
    target = make_url(PG_URL)
    async with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        async with FakeGraph(token="test-token") as graph:
            async with run_gateway(settings(via(PG_URL, proxy), graph), env=ENV) as g:
                assert (await post(g, text_webhook("wamid.PG1", "one"))).status_code == 200

                await proxy.cut()
                r = await post(g, text_webhook("wamid.PG2", "two"))
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                assert r.headers["retry-after"]
                assert (await ready(g)).status_code == 503
                # A chat token cannot be minted either: 503, not a 500 "bug".
                async with g.client() as c:
                    t = await c.post("/v1/tokens", json={"agent": "demo", "channel": "chat"})
                assert t.status_code == 503

                await proxy.restore()

                async def is_ready() -> bool:
                    return (await ready(g)).status_code == 200

                await until(is_ready, timeout=20)
                # Meta redelivers what got no 200: stored now, answered once.
                assert (await post(g, text_webhook("wamid.PG2", "two"))).status_code == 200
                assert (await post(g, text_webhook("wamid.PG2", "two"))).status_code == 200

                async def answered() -> bool:
                    bodies = "\n".join(m["text"]["body"] for m in graph.sent)
                    return "one" in bodies and "two" in bodies

                await until(answered, timeout=20)
                await asyncio.sleep(0.5)
                sid = (await g.runtime.store.sessions(SessionQuery(agent="support")))[0].id
                messages = await g.runtime.store.messages(sid)
        # "one"'s turn was cut by the outage and ran again with "two" (one reply, or two):
        # every message answered, nothing sent twice, the redelivered webhook stored once.
        assert [m.text for m in messages if m.role == "user"] == ["one", "two"]
        assert not any(m.pending for m in messages)
        bodies = [line for m in graph.sent for line in m["text"]["body"].split("\n")]
        assert sorted(bodies) == ["one", "two"]
