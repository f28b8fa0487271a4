"""Every way to answer, end to end through a real gateway: chat WebSocket in, agent out.

The LLM and webhook backends are real HTTP servers on 127.0.0.1 (tests/fakes).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets

from tests.conftest import Running, SseReader, free_port, make_settings, mint, run_gateway
from tests.fakes.openai_server import FakeOpenAI, error_reply, text_reply, tool_reply
from tests.fakes.scripted_http import Recorded, Reply
from tests.fakes.webhook_backend import FakeWebhookBackend, ndjson_reply, raw_reply


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def until(ws: Any, *events: str, timeout: float = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws)
            if frame["event"] in events:
                return frame, seen
            seen.append(frame)


def llm_agent(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "answer": "llm",
        "prompt": "You are Nova of {{company}}.",
        "llm": {"base_url": fake.url, "model": "fake-model", "first_token_timeout_seconds": 3},
        "allowed_origins": ["http://127.0.0.1:*"],
        **extra,
    }


def json_tool(result: Any) -> Reply:
    return Reply(
        headers={"content-type": "application/json"}, pieces=[json.dumps(result).encode()], chunked=False
    )


async def all_events(g: Running, session_id: str) -> list[dict[str, Any]]:
    async with g.client() as c, c.stream("GET", f"/v1/events?session={session_id}&lastEventId=0") as r:
        feed, out = SseReader(r), []
        while (f := await feed.next_event())["event"] != "stream.caughtUp":
            out.append(f["json"])
        return out


async def test_llm_agent_streams_and_sees_prompt_context_and_history(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([text_reply("Hel", "lo ", "✓"), text_reply("again")])
        async with run_gateway(make_settings(sqlite_url, agents={"support": llm_agent(fake)})) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "context", "key": "page", "value": "/pricing"}))
                await ws.send(json.dumps({"event": "message", "text": "hi"}))
                done, before = await until(ws, "chat.done")
                assert [f["text"] for f in before if f["event"] == "chat.token"] == ["Hel", "lo ", "✓"]
                assert done["text"] == "Hello ✓"
                await ws.send(json.dumps({"event": "message", "text": "more"}))
                await until(ws, "chat.done")
            events = await all_events(g, sid)
    first, second = fake.bodies
    assert first["stream"] is True and first["model"] == "fake-model"
    system = first["messages"][0]
    assert system["role"] == "system" and "You are Nova of {{company}}." in system["content"]
    assert "## UI Context" in system["content"] and "/pricing" in system["content"]
    assert [(m["role"], m["content"]) for m in second["messages"][1:]] == [
        ("user", "hi"),
        ("assistant", "Hello ✓"),
        ("user", "more"),
    ]
    done_event = next(e for e in events if e["event"] == "bot.message")
    assert (
        done_event["inReplyTo"]
        and "firstTokenMs" in done_event["timings"]
        and "totalMs" in done_event["timings"]
    )


async def test_tools_run_results_feed_back_and_ephemeral_ones_are_pruned(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        calls: list[Recorded] = []

        def lookup(request: Recorded) -> Reply:
            calls.append(request)
            return json_tool({"orderId": request.json()["orderId"], "status": "shipped"})

        fake.route("/tools/lookup", lookup)
        fake.route("/tools/time", lambda _r: json_tool({"now": "12:00"}))
        tools = [
            {
                "name": "lookupOrder",
                "description": "Find an order",
                "url": f"{fake.base_url}/tools/lookup",
                "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}}},
            },
            {"name": "getTime", "url": f"{fake.base_url}/tools/time", "ephemeral": True},
        ]
        fake.script(
            [
                tool_reply([("c1", "lookupOrder", '{"orderId": "42"}'), ("c2", "getTime", "{}")]),
                text_reply("Order 42 shipped at 12:00"),
                text_reply("ok"),
            ]
        )
        async with run_gateway(
            make_settings(sqlite_url, agents={"support": llm_agent(fake, tools=tools)})
        ) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "where is 42?"}))
                done, _ = await until(ws, "chat.done")
                assert done["text"] == "Order 42 shipped at 12:00"
                await ws.send(json.dumps({"event": "message", "text": "thanks"}))
                await until(ws, "chat.done")
            events = await all_events(g, sid)
            async with g.client() as c:
                record = (await c.get(f"/v1/sessions/{sid}")).json()
    first, second, third = fake.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["lookupOrder", "getTime"]
    # Both results were used for the reply being made...
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert {m["tool_call_id"] for m in tool_messages} == {"c1", "c2"}
    # ...then the ephemeral one is gone from history, events and the stored transcript.
    history = third["messages"]
    assert all("c2" not in json.dumps(m) for m in history)
    assert any(m.get("tool_call_id") == "c1" for m in history)
    kinds = [e["event"] for e in events]
    assert kinds.count("llm.toolCall") == 1 and kinds.count("llm.toolResult") == 1
    result = next(e for e in events if e["event"] == "llm.toolResult")
    assert result["name"] == "lookupOrder" and result["result"] == {"orderId": "42", "status": "shipped"}
    assert calls[0].headers["x-gateway-session"] == sid
    assert "getTime" not in json.dumps(record["messages"])
    assert [t["text"] for t in record["transcript"]] == [
        "where is 42?",
        "Order 42 shipped at 12:00",
        "thanks",
        "ok",
    ]


async def test_llm_failures_become_chat_errors_and_the_session_stays_usable(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([error_reply(500, "model exploded"), text_reply("recovered")])
        dead = {"answer": "llm", "llm": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}}
        agents = {"support": llm_agent(fake), "dead": dead}
        async with run_gateway(make_settings(sqlite_url, agents=agents)) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "hi"}))
                err, _ = await until(ws, "chat.error")
                assert err["code"] and "500" in err["message"]
                await ws.send(json.dumps({"event": "message", "text": "again"}))
                done, _ = await until(ws, "chat.done")
                assert done["text"] == "recovered"
            events = await all_events(g, sid)
            assert [e["event"] for e in events].count("session.error") == 1
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'dead')}") as ws:
                await recv(ws)
                await ws.send(json.dumps({"event": "message", "text": "anyone?"}))
                err, _ = await until(ws, "chat.error")
                assert err["message"]


async def test_webhook_agent_streams_ndjson_and_reports_errors(sqlite_url: str, tmp_path: Path) -> None:
    async with FakeWebhookBackend() as backend:
        backend.script(
            [ndjson_reply(["Hi ", "from ", "hook"]), raw_reply(503, b"maintenance"), ndjson_reply(["back"])]
        )
        agents = {"hook": {"answer": "webhook", "webhook": {"url": backend.url, "secret_env": "HOOK_SECRET"}}}
        settings = make_settings(sqlite_url, agents=agents)
        async with run_gateway(settings, env={"HOOK_SECRET": "s3cret"}) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'hook')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "hello"}))
                done, before = await until(ws, "chat.done")
                assert (
                    done["text"] == "Hi from hook"
                    and len([f for f in before if f["event"] == "chat.token"]) == 3
                )
                await ws.send(json.dumps({"event": "message", "text": "x"}))
                err, _ = await until(ws, "chat.error")
                assert "503" in err["message"] and "maintenance" in err["message"]
                await ws.send(json.dumps({"event": "message", "text": "y"}))
                done, _ = await until(ws, "chat.done")
                assert done["text"] == "back"
    from gateway.agents.webhook import verify

    first = backend.requests[0]
    body = first.json()
    assert body["sessionId"] == sid and body["agent"] == "hook" and body["message"]["text"] == "hello"
    assert verify(
        "s3cret", first.headers["x-gateway-timestamp"], first.body, first.headers["x-gateway-signature"]
    )
    # A failed turn leaves the user's words in the history; no reply is invented for them.
    assert [m["text"] for m in backend.requests[2].json()["history"]] == ["hello", "Hi from hook", "x"]


async def test_closing_the_chat_cancels_the_upstream_stream_and_stores_no_reply(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([text_reply(*[f"t{i} " for i in range(50)], delay=0.1)])
        async with run_gateway(make_settings(sqlite_url, agents={"support": llm_agent(fake)})) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "long story please"}))
                await until(ws, "chat.token")
            async with asyncio.timeout(3):
                await fake.client_gone.wait()  # the upstream stream was closed promptly
            messages = await g.runtime.store.messages(sid)
            assert [m.role for m in messages] == ["user"] and messages[0].pending  # answered on reconnect


async def test_a_newer_message_interrupts_when_configured(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([text_reply(*[f"t{i} " for i in range(50)], delay=0.1), text_reply("both answered")])
        agents = {"support": llm_agent(fake, interrupt=True)}
        async with run_gateway(make_settings(sqlite_url, agents=agents)) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "first"}))
                await until(ws, "chat.token")
                await ws.send(json.dumps({"event": "message", "text": "actually, second"}))
                done, _ = await until(ws, "chat.done")
                assert done["text"] == "both answered"
            stored = [(m.role, m.text) for m in await g.runtime.store.messages(sid)]
    assert stored == [("user", "first"), ("user", "actually, second"), ("assistant", "both answered")]
    assert [m["content"] for m in fake.bodies[1]["messages"][1:]] == ["first", "actually, second"]


async def test_ending_the_session_cancels_its_turn(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([text_reply(*[f"t{i} " for i in range(50)], delay=0.1)])
        async with run_gateway(make_settings(sqlite_url, agents={"support": llm_agent(fake)})) as g:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "go"}))
                await until(ws, "chat.token")
                async with g.client() as c:
                    assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 200
                ended, _ = await until(ws, "chat.ended")
                assert ended["reason"] == "erased"
                async with asyncio.timeout(3):
                    await fake.client_gone.wait()
