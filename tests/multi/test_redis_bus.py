"""The Redis bus between gateways sharing one PostgreSQL database (issue 14, item 1).

Two real uvicorn servers in this process, each with its own runtime, engine and
Redis connections: what one commits, a feed on the other sees in `seq` order, with
no gap and no duplicate, whether the bus carried it or the store had to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from gateway.bus.redis import RedisBackend, parse_bus_url
from tests.conftest import ADMIN, Running, SseReader, make_settings, mint, reset_postgres, run_gateway
from tests.services import PG_URL, need_postgres, redis_bus_url

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def pg() -> str:
    need_postgres()
    await reset_postgres()
    return PG_URL


@contextlib.asynccontextmanager
async def instances(db: str, bus: str | list[str], n: int = 2, **server: Any) -> AsyncIterator[list[Running]]:
    buses = bus if isinstance(bus, list) else [bus] * n
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for url in buses:  # one after the other: the first one migrates
            settings = make_settings(db, server={"bus_url": url, "bus_catch_up_seconds": 0.2, **server})
            out.append(await stack.enter_async_context(run_gateway(settings)))
        yield out


async def chat(g: Running, texts: list[str]) -> str:
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:
        sid = json.loads(await ws.recv())["sessionId"]
        for text in texts:
            await ws.send(json.dumps({"event": "message", "text": text}))
            async with asyncio.timeout(10):
                while json.loads(await ws.recv())["event"] != "chat.done":
                    pass
    return str(sid)


async def read_until(feed: SseReader, last_seq: int, timeout: float = 10) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not frames or "id" not in frames[-1] or int(frames[-1]["id"]) < last_seq:
            frame = await feed.next_event()
            if "id" in frame:
                frames.append(frame)
    return frames


def test_bus_url_carries_db_and_channel() -> None:
    assert parse_bus_url("redis://h:6379/3") == ("redis://h:6379/3", "switchboard:bus:3")
    assert parse_bus_url("redis://h:6379/3?channel=x&ssl_cert_reqs=none") == (
        "redis://h:6379/3?ssl_cert_reqs=none",
        "x",
    )
    assert parse_bus_url("rediss://:pw@h") == ("rediss://:pw@h", "switchboard:bus:0")


async def test_feed_on_b_sees_every_event_committed_on_a_in_order(pg: str) -> None:
    bus = redis_bus_url(uuid.uuid4().hex)
    async with instances(pg, bus) as (a, b):
        async with httpx.AsyncClient(base_url=b.url, headers=AUTH, timeout=10) as c:
            async with c.stream("GET", "/v1/events?tokens=true") as r:
                feed = SseReader(r)
                await feed.next()  # ": connected": subscribed before anything is written
                sids = await asyncio.gather(chat(a, ["one", "two"]), chat(b, ["three"]), chat(a, ["four"]))
                stored = await a.runtime.store.events_after(0, limit=10_000)
                frames = await read_until(feed, stored[-1].seq or 0)
        seen = [int(f["id"]) for f in frames]
        assert seen == [e.seq for e in stored]  # every committed event, in seq order, once
        assert {f["json"]["sessionId"] for f in frames} == set(sids)
        backend = b.runtime.bus.backend
        assert isinstance(backend, RedisBackend) and backend.connected


async def test_last_event_id_resumes_on_another_instance(pg: str) -> None:
    bus = redis_bus_url(uuid.uuid4().hex)
    async with instances(pg, bus) as (a, b):
        await chat(a, ["first", "second"])
        events = await a.runtime.store.events_after(0)
        middle = events[2].seq
        async with httpx.AsyncClient(
            base_url=b.url, headers={**AUTH, "last-event-id": str(middle)}, timeout=10
        ) as c:
            async with c.stream("GET", "/v1/events") as r:
                feed = SseReader(r)
                replayed = []
                while True:
                    f = await feed.next_event()
                    if f["event"] == "stream.caughtUp":
                        break
                    replayed.append(int(f["id"]))
                assert replayed == [e.seq for e in events[3:]]
                await chat(a, ["third"])
                live = [await feed.next_event() for _ in range(3)]
        assert [f["event"] for f in live] == ["session.started", "user.message", "bot.message"]
        assert int(live[0]["id"]) == events[-1].seq + 1


async def test_chat_socket_sees_human_message_sent_through_another_instance(pg: str) -> None:
    """A session's own topic crosses instances too: the socket is on A, the REST call on B."""
    bus = redis_bus_url(uuid.uuid4().hex)
    async with instances(pg, bus) as (a, b):
        async with websockets.connect(f"{a.ws_url}/chat/ws?token={await mint(a)}") as ws:
            sid = json.loads(await ws.recv())["sessionId"]
            async with b.client() as c:
                r = await c.post(f"/v1/sessions/{sid}/messages", json={"text": "hello from a human"})
                assert r.status_code in (200, 201, 202), r.text
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["event"] == "chat.message":
                        break
        assert frame["text"] == "hello from a human" and frame["source"] == "human"


async def test_events_reach_other_instances_when_the_publisher_has_no_redis(pg: str) -> None:
    """A's Redis is unreachable: its commits still reach B's feed, from the store, in order."""
    bus = redis_bus_url(uuid.uuid4().hex)
    dead = "redis://127.0.0.1:1/5"  # nothing listens on port 1
    async with instances(pg, [dead, bus]) as (a, b):
        async with httpx.AsyncClient(base_url=b.url, headers=AUTH, timeout=10) as c:
            async with c.stream("GET", "/v1/events") as r:
                feed = SseReader(r)
                await feed.next()
                await chat(a, ["while the bus is down"])
                await chat(b, ["and here"])
                stored = await b.runtime.store.events_after(0)
                frames = await read_until(feed, stored[-1].seq or 0)
        assert [int(f["id"]) for f in frames] == [e.seq for e in stored]
        backend = a.runtime.bus.backend
        assert isinstance(backend, RedisBackend) and not backend.connected and backend.lost > 0
        async with a.client() as c:
            ready = (await c.get("/readyz")).json()
        assert ready["status"] == "degraded" and ready["checks"]["bus"].startswith("error")


def test_bus_url_schemes() -> None:
    from gateway.errors import ConfigError
    from gateway.settings import Settings

    pg = {"database_url": "postgresql://u@h/db"}
    assert (
        Settings.from_dict({"server": {"bus_url": "redis://h:1/2", **pg}}).server.bus_url == "redis://h:1/2"
    )
    with pytest.raises(ConfigError, match="redis://host:port/db"):
        Settings.from_dict({"server": {"bus_url": "kafka://x"}})
