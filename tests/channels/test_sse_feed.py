"""The SSE event feeds against a real uvicorn server (PROTOCOL §3)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import websockets

from gateway.events import Event
from gateway.types import EventType
from tests.conftest import ADMIN, Running, SseReader, make_settings, mint, run_gateway

AUTH = {"authorization": f"Bearer {ADMIN}"}


async def chat(g: Running, text: str) -> str:
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:
        sid = json.loads(await ws.recv())["sessionId"]
        await ws.send(json.dumps({"event": "message", "text": text}))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["event"] != "chat.done":
                pass
    return str(sid)


async def test_live_events_with_ids_and_tokens_on_request(gateway_any_db: Running) -> None:
    g = gateway_any_db
    async with httpx.AsyncClient(base_url=g.url, headers=AUTH, timeout=10) as c:
        async with c.stream("GET", "/v1/events?tokens=true") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            feed = SseReader(r)
            sid = await chat(g, "hi there")
            frames = []
            while True:
                f = await feed.next_event()
                frames.append(f)
                if f["event"] == "bot.message":
                    break
    kinds = [f["event"] for f in frames]
    assert kinds == ["session.started", "user.message", "bot.token", "bot.token", "bot.message"]
    ids = [int(f["id"]) for f in frames if "id" in f]
    assert ids == sorted(ids) and len(ids) == 3  # tokens carry no id: they are never persisted
    assert all(f["json"]["sessionId"] == sid for f in frames)
    assert frames[-1]["json"]["text"] == "hi there" and frames[-1]["json"]["source"] == "agent"
    assert frames[1]["json"]["seq"] == int(frames[1]["id"])


async def test_replay_after_last_event_id_then_caught_up_then_live(gateway_any_db: Running) -> None:
    g = gateway_any_db
    await chat(g, "first")
    await chat(g, "second")
    events = await g.runtime.store.events_after(0)
    middle = events[2].seq  # replay everything after the third event
    async with httpx.AsyncClient(
        base_url=g.url, headers={**AUTH, "last-event-id": str(middle)}, timeout=10
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
            assert f["json"] == {"seq": events[-1].seq}
            await chat(g, "third")
            live = [await feed.next_event() for _ in range(3)]
    assert [f["event"] for f in live] == ["session.started", "user.message", "bot.message"]
    assert int(live[0]["id"]) == events[-1].seq + 1  # no gap, no duplicate


async def test_resume_while_events_are_being_written_has_no_gap_or_duplicate(gateway: Running) -> None:
    """Events land during the replay: the seqs a client sees are exactly the store's."""
    g = gateway
    await chat(g, "warm up")
    start = await g.runtime.store.last_seq()
    writers = asyncio.gather(*(chat(g, f"m{i}") for i in range(8)))
    seen: list[int] = []
    async with httpx.AsyncClient(base_url=g.url, headers=AUTH, timeout=10) as c:
        async with c.stream("GET", f"/v1/events?lastEventId={start}") as r:
            feed = SseReader(r)
            await writers
            final = await g.runtime.store.last_seq()
            while not seen or seen[-1] < final:
                f = await feed.next_event()
                if "id" in f:
                    seen.append(int(f["id"]))
    expected = [e.seq for e in await g.runtime.store.events_after(start, limit=1000)]
    assert seen == expected


async def test_filters_by_agent_session_and_type(sqlite_url: str) -> None:
    agents = {
        "demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]},
        "other": {"answer": "echo", "echo_delay_ms": 0},
    }
    async with run_gateway(make_settings(sqlite_url, agents=agents)) as g:
        sid = await chat(g, "mine")
        async with g.client() as c:
            other_token = (await c.post("/v1/tokens", json={"agent": "other"})).json()["token"]
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={other_token}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"event": "message", "text": "theirs"}))
            while json.loads(await ws.recv())["event"] != "chat.done":
                pass

        async def collect(path: str) -> list[dict[str, Any]]:
            async with httpx.AsyncClient(base_url=g.url, headers={**AUTH, "last-event-id": "0"}) as c:
                async with c.stream("GET", path) as r:
                    feed, out = SseReader(r), []
                    while (f := await feed.next_event())["event"] != "stream.caughtUp":
                        out.append(f["json"])
                    return out

        assert {e["agent"] for e in await collect("/v1/agents/other/events")} == {"other"}
        assert {e["agent"] for e in await collect("/v1/events?agents=demo")} == {"demo"}
        only = await collect(f"/v1/events?session={sid}&types=user.message,bot.message")
        assert [(e["event"], e["text"]) for e in only] == [("user.message", "mine"), ("bot.message", "mine")]
        async with g.client() as c:
            assert (await c.get("/v1/agents/nope/events")).status_code == 404
            assert (await c.get("/v1/events?agents=nope")).status_code == 404
            assert (await c.get("/v1/events", headers={"last-event-id": "abc"})).status_code == 400


async def test_auth_api_key_or_single_use_stream_token(gateway: Running) -> None:
    g = gateway
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
        assert (await c.get("/v1/events")).status_code == 401
        assert (await c.get("/v1/events", headers={"authorization": "Bearer sk_wrong"})).status_code == 401
        r = await c.get(f"/v1/events?token={ADMIN}")
        assert r.status_code == 401 and "never accepted in URLs" in r.json()["error"]["message"]
        token = await mint(g, channel="stream")
        async with c.stream("GET", f"/v1/agents/demo/events?token={token}") as r:
            assert r.status_code == 200
            assert (await SseReader(r).next())["comments"] == ["connected"]
        assert (await c.get(f"/v1/agents/demo/events?token={token}")).status_code == 401  # single use
        chat_token = await mint(g)
        assert (await c.get(f"/v1/events?token={chat_token}")).status_code == 401  # wrong channel


async def test_ping_comment_at_the_configured_interval(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url, server={"sse_ping_seconds": 0.2})) as g:
        async with httpx.AsyncClient(base_url=g.url, headers=AUTH, timeout=10) as c:
            async with c.stream("GET", "/v1/events") as r:
                feed = SseReader(r)
                assert (await feed.next())["comments"] == ["connected"]
                assert (await feed.next(timeout=2))["comments"] == ["ping"]
                assert (await feed.next(timeout=2))["comments"] == ["ping"]


async def test_a_stalled_client_is_cut_loose_and_others_keep_flowing(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, server={"sse_buffer_events": 50, "sse_send_timeout_seconds": 1})
    async with run_gateway(settings) as g:
        port = int(g.url.rsplit(":", 1)[1])
        # A client that never reads: a raw socket with a tiny receive buffer.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(
            b"GET /v1/events?tokens=true HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ADMIN}\r\n\r\n".encode()
        )
        try:
            async with httpx.AsyncClient(base_url=g.url, headers=AUTH, timeout=10) as c:
                async with c.stream("GET", "/v1/events?types=bot.message") as r:
                    feed = SseReader(r)
                    await feed.next()
                    async with asyncio.timeout(5):
                        while g.runtime.metrics.sse_clients._value.get() < 2:
                            await asyncio.sleep(0.02)
                    # ~12 MB of live token traffic: more than any socket buffer can absorb.
                    big = "x" * 4000
                    for i in range(3000):
                        g.runtime.bus.publish(
                            Event(
                                type=EventType.BOT_TOKEN,
                                agent="demo",
                                session_id="chat-x",
                                data={"messageId": "m", "text": big},
                            )
                        )
                        if i % 50 == 0:
                            await asyncio.sleep(0.01)
                    async with asyncio.timeout(10):
                        while g.runtime.metrics.sse_dropped._value.get() < 1:
                            await asyncio.sleep(0.05)
                    # The healthy client still gets everything, promptly.
                    await chat(g, "after the flood")
                    f = await feed.next_event(timeout=5)
                    assert f["event"] == "bot.message" and f["json"]["text"] == "after the flood"
        finally:
            stalled.close()


async def test_a_filtered_feed_still_pings_while_other_events_flow(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url, server={"sse_ping_seconds": 0.3})) as g:
        async with httpx.AsyncClient(base_url=g.url, headers=AUTH, timeout=10) as c:
            async with c.stream("GET", "/v1/events?types=bot.message") as r:
                feed = SseReader(r)
                await feed.next()

                async def noise() -> None:
                    for _ in range(40):  # events this feed filters out, every 50 ms
                        g.runtime.bus.publish(
                            Event(
                                type=EventType.BOT_TOKEN,
                                agent="demo",
                                session_id="chat-x",
                                data={"messageId": "m", "text": "x"},
                            )
                        )
                        await asyncio.sleep(0.05)

                task = asyncio.create_task(noise())
                try:
                    assert (await feed.next(timeout=1.5))["comments"] == ["ping"]
                finally:
                    task.cancel()
