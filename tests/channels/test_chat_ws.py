"""The chat WebSocket against a real uvicorn server (PROTOCOL §4)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import Running, make_settings, mint, run_gateway


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def until(ws: Any, event: str, timeout: float = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws)
            if frame["event"] == event:
                return frame, seen
            seen.append(frame)


async def test_streams_tokens_then_done_with_whole_text(gateway_any_db: Running) -> None:
    g = gateway_any_db
    token = await mint(g)
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={token}") as ws:
        started = await recv(ws)
        assert started["event"] == "chat.started" and started["agent"] == "demo"
        assert started["sessionId"].startswith("chat-") and "history" not in started
        await ws.send(json.dumps({"event": "message", "text": "one two three"}))
        done, before = await until(ws, "chat.done")
        deltas = [f["text"] for f in before if f["event"] == "chat.token"]
        assert deltas == ["one ", "two ", "three"]
        assert done["text"] == "one two three"
        assert {f["messageId"] for f in before} == {done["messageId"]}
    async with g.client() as c:
        record = (await c.get(f"/v1/sessions/{started['sessionId']}")).json()
    assert [(m["role"], m["text"]) for m in record["messages"]] == [
        ("user", "one two three"),
        ("assistant", "one two three"),
    ]


async def test_bad_frames_get_chat_error_and_socket_stays_open(gateway: Running) -> None:
    token = await mint(gateway)
    async with websockets.connect(f"{gateway.ws_url}/chat/ws?token={token}") as ws:
        await recv(ws)
        bad = [
            ("not json", "invalid_json"),
            ("[1,2]", "invalid_frame"),
            (json.dumps({"event": "dance"}), "unknown_event"),
            (json.dumps({"event": "message", "text": ""}), "empty_text"),
            (json.dumps({"event": "message", "text": "   "}), "empty_text"),
            (json.dumps({"event": "message", "text": 5}), "invalid_text"),
            (json.dumps({"event": "message", "text": "x" * 4097}), "text_too_long"),
            (json.dumps({"event": "context", "key": "", "value": 1}), "invalid_context"),
            (json.dumps({"event": "context", "key": "page"}), "invalid_context"),
            (json.dumps({"noevent": 1}), "invalid_frame"),
        ]
        for raw, code in bad:
            await ws.send(raw)
            frame = await recv(ws)
            assert frame["event"] == "chat.error" and frame["code"] == code, (raw, frame)
        await ws.send(b"\xff\xfe binary garbage")
        assert (await recv(ws))["code"] == "invalid_json"
        await ws.send(json.dumps({"event": "ping"}))
        assert await recv(ws) == {"event": "pong"}
        await ws.send(json.dumps({"event": "message", "text": "still here"}))
        done, _ = await until(ws, "chat.done")
        assert done["text"] == "still here"


@pytest.mark.parametrize("case", ["garbage", "missing", "reused", "expired", "stream-token"])
async def test_bad_tokens_close_with_4401(sqlite_url: str, case: str) -> None:
    settings = make_settings(sqlite_url, server={"token_ttl_seconds": 1})
    async with run_gateway(settings) as g:
        if case == "garbage":
            query = "?token=tk_nope"
        elif case == "missing":
            query = ""
        elif case == "stream-token":
            query = f"?token={await mint(g, channel='stream')}"
        else:
            token = await mint(g)
            if case == "reused":
                async with websockets.connect(f"{g.ws_url}/chat/ws?token={token}") as ws:
                    await recv(ws)
            else:
                await asyncio.sleep(1.2)
            query = f"?token={token}"
        async with websockets.connect(f"{g.ws_url}/chat/ws{query}") as ws:
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        assert info.value.rcvd.reason


async def test_resume_sends_history_and_continues_the_session(gateway_any_db: Running) -> None:
    g = gateway_any_db
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:
        sid = (await recv(ws))["sessionId"]
        await ws.send(json.dumps({"event": "message", "text": "remember me"}))
        await until(ws, "chat.done")
    token = await mint(g, sessionId=sid)
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={token}") as ws:
        started = await recv(ws)
        assert started["sessionId"] == sid
        assert [(m["role"], m["text"]) for m in started["history"]] == [
            ("user", "remember me"),
            ("assistant", "remember me"),
        ]
        await ws.send(json.dumps({"event": "message", "text": "again"}))
        done, _ = await until(ws, "chat.done")
        assert done["text"] == "again"


async def test_messages_during_a_reply_are_answered_together_next(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, agents={"demo": {"answer": "echo", "echo_delay_ms": 60}})
    async with run_gateway(settings) as g:
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:
            await recv(ws)
            await ws.send(json.dumps({"event": "message", "text": "a b c d"}))
            first = await recv(ws)
            assert first["event"] == "chat.token"
            await ws.send(json.dumps({"event": "message", "text": "second"}))
            await ws.send(json.dumps({"event": "message", "text": "third"}))
            done1, _ = await until(ws, "chat.done")
            assert done1["text"] == "a b c d"  # the running turn is not disturbed
            done2, _ = await until(ws, "chat.done")
            assert done2["text"] == "second\nthird"  # both queued messages, one turn


async def test_context_frames_reach_the_agent_input(gateway: Running) -> None:
    async with websockets.connect(f"{gateway.ws_url}/chat/ws?token={await mint(gateway)}") as ws:
        sid = (await recv(ws))["sessionId"]
        await ws.send(json.dumps({"event": "context", "key": "page", "value": "/pricing"}))
        await ws.send(json.dumps({"event": "context", "key": "cart", "value": {"items": 2}}))
        await ws.send(json.dumps({"event": "context", "key": "cart", "value": None}))
        await ws.send(json.dumps({"event": "ping"}))
        assert (await recv(ws))["event"] == "pong"  # frames are handled in order
    session = await gateway.runtime.store.session(sid)
    assert session is not None and session.context == {"page": "/pricing"}


async def test_unknown_session_in_token_closes_4404(gateway: Running) -> None:
    async with gateway.client() as c:
        r = await c.post("/v1/tokens", json={"agent": "demo", "sessionId": "chat-000000000000"})
    assert r.status_code == 404
