"""An agent process connected to one gateway serves sessions whose messages arrive at
another (issue 14, item 7): two gateways in this test process on one PostgreSQL and one
Redis, each with its own engine, writer, turn runner, hub and outbox.

The process is connected to A. WhatsApp messages for its agent are delivered to B: B
does not run their turns (it has no process) but asks on the bus for the instance that
has it; A runs them, exchanging the turn with the process, and the reply is sent. The
process also receives the events of those sessions. It then reconnects to B with its
`last_seq` and gets what it missed, once, in `seq` order; B now runs the turns itself."""

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

from channels.whatsapp.signature import sign
from gateway.client import Gateway, Turn
from tests.conftest import ADMIN, Running, make_settings, reset_postgres, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.services import PG_URL, need_postgres, redis_bus_url
from tests.whatsapp.test_channel import ENV, SECRET, number, text_webhook

FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.2, "request_timeout": 5.0}


@contextlib.asynccontextmanager
async def two(graph: FakeGraph) -> AsyncIterator[tuple[Running, Running]]:
    need_postgres()
    await reset_postgres()
    server = {
        "bus_url": redis_bus_url(f"agents-{uuid.uuid4().hex}"),
        "bus_catch_up_seconds": 0.5,
        "turn_lease_seconds": 2.0,
        "outbox_poll_seconds": 0.05,
    }
    byo = {"answer": "process", "whatsapp": [number(graph)], "limits": {"process_reconnect_seconds": 5}}
    cfg = make_settings(PG_URL, agents={"byo": byo}, server=server)
    async with run_gateway(cfg, env=ENV) as a, run_gateway(cfg, env=ENV) as b:
        yield a, b


async def post(node: Running, body: bytes) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{node.url}/whatsapp/webhook",
            content=body,
            headers={"content-type": "application/json", "x-hub-signature-256": sign(body, SECRET)},
        )
        assert r.status_code == 200, r.text


async def until(predicate: Any, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.timeout(90)
async def test_a_process_on_one_instance_answers_messages_that_arrive_at_another() -> None:
    async with FakeGraph(token="test-token") as graph, two(graph) as (a, b):
        turns: list[tuple[str, str]] = []
        seen: list[tuple[int, str, str]] = []

        def serve(url: str, last_seq: int | None = None) -> Gateway:
            gw = Gateway(url, api_key=ADMIN, **FAST)
            byo = gw.agent("byo", last_seq=last_seq)

            @byo.on_turn
            async def answer(turn: Turn) -> str:
                turns.append((url, turn.text))
                return f"you said {turn.text}"

            @byo.on("user.message")
            def message(event: dict[str, Any]) -> None:
                seen.append((int(event["seq"]), url, str(event["text"])))

            return gw

        first = serve(a.url)
        first.start()
        await first.wait_ready(10)
        try:
            for i in range(3):
                await post(b, text_webhook(f"wamid.AGT{i}", f"hello-{i}", sender=f"3464000000{i:02d}"))
            await until(lambda: len(graph.sent) == 3)
            assert sorted(t for _u, t in turns) == ["hello-0", "hello-1", "hello-2"]
            assert {u for u, _t in turns} == {a.url}  # exchanged with the process, on A
            await until(lambda: len(seen) == 3)  # B's sessions' events, pushed by A
            last = max(s for s, _u, _t in seen)
        finally:
            async with asyncio.timeout(10):
                await first.close()

        # Missed while disconnected, then the process comes back on the other instance.
        await post(b, text_webhook("wamid.AGT9", "while-away", sender="346400000099"))
        second = serve(b.url, last_seq=last)
        second.start()
        try:
            await second.wait_ready(10)
            await until(lambda: len(graph.sent) == 4)
            await until(lambda: any(t == "while-away" for _s, _u, t in seen))
        finally:
            async with asyncio.timeout(10):
                await second.close()
    assert sorted(b["text"]["body"] for b in graph.sent) == [
        "you said hello-0",
        "you said hello-1",
        "you said hello-2",
        "you said while-away",
    ]
    assert turns[-1] == (b.url, "while-away")
    seqs = [s for s, _u, _t in seen]
    assert seqs == sorted(set(seqs))  # each event once, in seq order, across the reconnect


@pytest.mark.timeout(90)
async def test_an_agent_a_process_declares_on_one_instance_is_known_to_the_other() -> None:
    """Not in gateway.toml: declared by the process connected to A, then a browser on B
    mints a token for it and chats there; the turn is exchanged with the process on A."""
    async with FakeGraph(token="test-token") as graph, two(graph) as (a, b):
        gw = Gateway(a.url, api_key=ADMIN, **FAST)
        dyn = gw.agent("dyn", allowed_origins=["http://127.0.0.1:*"])

        @dyn.on_turn
        async def answer(turn: Turn) -> str:
            return f"from A: {turn.text}"

        gw.start()
        try:
            await gw.wait_ready(10)
            async with httpx.AsyncClient(base_url=b.url, headers={"authorization": f"Bearer {ADMIN}"}) as c:
                async with asyncio.timeout(5):  # the declaration reaches B over the bus
                    while (r := await c.post("/v1/tokens", json={"agent": "dyn"})).status_code != 201:
                        assert r.status_code == 404, r.text
                        await asyncio.sleep(0.05)
                token = r.json()["token"]
            async with websockets.connect(f"{b.ws_url}/chat/ws?token={token}") as ws:
                await ws.recv()  # chat.ready
                await ws.send(json.dumps({"event": "message", "text": "hi"}))
                async with asyncio.timeout(15):
                    while (frame := json.loads(await ws.recv()))["event"] != "chat.done":
                        pass
            assert frame["text"] == "from A: hi"
        finally:
            async with asyncio.timeout(10):
                await gw.close()
