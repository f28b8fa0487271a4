"""Bad frames on every socket: an error frame (the relay: logged and ignored), never a drop.

The chat socket and the agent socket refuse a frame carrying a lone surrogate, a
NUL, a non-finite number, a value beyond int64 or a wrong type with an error frame
and go on serving; the relay (Twilio's words) makes text safe and goes on with the
call. Each test ends by proving the socket still works.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.conftest import ADMIN, Running, mint
from tests.twilio.helpers import twilio_gateway
from tests.twilio.relay_client import connected_call

CHAT_FRAMES = [
    ('{"event": "message", "text": "\\ud800"}', "invalid_text"),
    ('{"event": "message", "text": "x\\udfffy"}', "invalid_text"),
    ('{"event": "message", "text": "a\\u0000b"}', "invalid_text"),
    ('{"event": "message", "text": []}', "invalid_text"),
    ('{"event": "message", "text": {}}', "invalid_text"),
    ('{"event": "message", "text": 9223372036854775808}', "invalid_text"),
    ('{"event": "context", "key": "k", "value": "\\ud800"}', "invalid_context"),
    ('{"event": "context", "key": "k", "value": {"\\u0000": 1}}', "invalid_context"),
    ('{"event": "context", "key": "\\ud800", "value": 1}', "invalid_context"),
    ('{"event": "context", "key": "k", "value": 1e400}', "invalid_json"),
    ('{"event": "context", "key": "k", "value": NaN}', "invalid_json"),
    ('{"event": "context", "key": [], "value": 1}', "invalid_context"),
    ('{"event": "\\ud800"}', "invalid_frame"),
    ('{"event": ["message"]}', "invalid_frame"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),
    ('{"event": "message", "text": "' + "x" * 70_000 + '"}', "frame_too_large"),
]


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def test_chat_socket_answers_bad_frames_and_stays_open(gateway_any_db: Running) -> None:
    g = gateway_any_db
    token = await mint(g)
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={token}", max_size=None) as ws:
        started = await recv(ws)
        for raw, code in CHAT_FRAMES:
            await ws.send(raw)
            frame = await recv(ws)
            assert frame["event"] == "chat.error" and frame["code"] == code, (raw[:80], frame)
        await ws.send(json.dumps({"event": "message", "text": "still here"}))
        while (frame := await recv(ws))["event"] != "chat.done":
            assert frame["event"] == "chat.token", frame
        assert frame["text"] == "still here"
    async with g.client() as c:
        record = (await c.get(f"/v1/sessions/{started['sessionId']}")).json()
    assert [m["text"] for m in record["messages"]] == ["still here", "still here"]
    assert record["metadata"] == {}


AGENT_FRAMES = [
    '{"event": "agent.register", "agent_id": "byo", "config": {}, "last_seq": 9223372036854775808}',
    '{"event": "agent.register", "agent_id": "byo", "config": {}, "last_seq": 1e400}',
    '{"event": "agent.register", "agent_id": "byo", "config": {"prompt": "\\ud800"}}',
    '{"event": "agent.register", "agent_id": "\\u0000", "config": {}}',
    '{"event": "agent.register", "agent_id": [], "config": {}}',
    '{"event": "ping", "request_id": "\\ud800"}',
    '{"event": "session.send", "session_id": "a\\u0000b", "text": "x"}',
    '{"event": "session.set_prompt", "session_id": "chat-x", "prompt": "\\udfff"}',
    '{"event": "reply.chunk", "message_id": "m", "token": "\\ud800"}',
    '{"event": "session.pause", "agent_id": {}, "contact": []}',
    '{"event": "tool.result", "tool_call_id": "c", "result": NaN}',
    '{"event": {"\\ud800": 1}}',
]


async def test_agent_socket_answers_bad_frames_and_stays_open(gateway_any_db: Running) -> None:
    g = gateway_any_db
    async with websockets.connect(
        f"{g.ws_url}/v1/agents/ws", additional_headers={"Authorization": f"Bearer {ADMIN}"}
    ) as proc:
        for raw in AGENT_FRAMES:
            await proc.send(raw)
            frame = await recv(proc)
            assert frame["event"] == "error", (raw, frame)
            assert frame["code"] in ("invalid_frame", "invalid_json", "forbidden"), (raw, frame)
        config = {"prompt": "p", "allowed_origins": ["http://127.0.0.1:*"]}
        await proc.send(json.dumps({"event": "agent.register", "agent_id": "byo", "config": config}))
        while (frame := await recv(proc))["event"] != "agent.registered":
            pass
        await proc.send(json.dumps({"event": "ping"}))
        assert await recv(proc) == {"event": "pong"}
    agents = await g.runtime.store.agent_rows()
    assert agents["byo"][1]["prompt"] == "p"


async def test_relay_makes_bad_text_safe_and_the_call_goes_on(db_url: str) -> None:
    async with twilio_gateway(db_url) as (g, _), connected_call(g, "CA" + "7" * 32) as (relay, sid):
        for raw in (
            '{"type": "prompt", "voicePrompt": [], "last": true}',
            '{"type": "\\ud800"}',
            "[" * 5000 + "]" * 5000,
            '{"type": "prompt", "voicePrompt": "' + "x" * 70_000 + '"}',
        ):
            await relay.send(raw)
        await relay.send('{"type": "prompt", "voicePrompt": "hi\\ud800 there\\u0000", "last": true}')
        text, _ = await relay.reply()
        assert text == "hi\ufffd there"
        await relay.send({"type": "prompt", "voicePrompt": "still there?", "last": True})
        text, _ = await relay.reply()
        assert text == "still there?"
        async with g.client() as c:
            record = (await c.get(f"/v1/sessions/{sid}")).json()
            listed = await c.get("/v1/sessions")
        assert listed.status_code == 200
        assert [m["text"] for m in record["messages"] if m["role"] == "user"] == [
            "hi\ufffd there",
            "still there?",
        ]
