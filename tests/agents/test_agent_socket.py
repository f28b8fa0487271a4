"""`WS /v1/agents/ws` spoken frame by frame (the shipped client has its own tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import ADMIN, Running, make_settings, mint, run_gateway
from tests.fakes.openai_server import FakeOpenAI, text_reply, tool_reply


@asynccontextmanager
async def process(g: Running, key: str = ADMIN) -> AsyncIterator[Any]:
    async with websockets.connect(
        f"{g.ws_url}/v1/agents/ws", additional_headers={"Authorization": f"Bearer {key}"}
    ) as ws:
        yield ws


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


async def register(ws: Any, agent_id: str = "byo", **frame: Any) -> dict[str, Any]:
    config = frame.pop("config", {"prompt": "You are BYO.", "allowed_origins": ["http://127.0.0.1:*"]})
    await ws.send(json.dumps({"event": "agent.register", "agent_id": agent_id, "config": config, **frame}))
    registered, _ = await until(ws, "agent.registered")
    return registered


async def test_process_answers_turns_with_streamed_replies(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g, process(g) as proc:
        await register(proc)
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'byo')}") as chat:
            sid = (await recv(chat))["sessionId"]
            await chat.send(json.dumps({"event": "message", "text": "hello process"}))
            turn, seen = await until(proc, "turn")
            assert [e["event"] for e in seen] == ["session.started", "user.message"]
            assert turn["session_id"] == sid and turn["text"] == "hello process" and turn["history"] == []
            mid = turn["message_id"]
            await proc.send(json.dumps({"event": "reply.start", "session_id": sid, "message_id": mid}))
            for tok in ("Hi ", "there"):
                await proc.send(
                    json.dumps({"event": "reply.chunk", "session_id": sid, "message_id": mid, "token": tok})
                )
            await proc.send(json.dumps({"event": "reply.end", "session_id": sid, "message_id": mid}))
            done, before = await until(chat, "chat.done")
            assert done == {"event": "chat.done", "messageId": mid, "text": "Hi there"}
            assert [f["text"] for f in before if f["event"] == "chat.token"] == ["Hi ", "there"]
            bot, _ = await until(proc, "bot.message")
            assert bot["text"] == "Hi there" and bot["seq"] > 0


async def test_malformed_frames_get_error_and_the_socket_stays(gateway: Running) -> None:
    async with process(gateway) as proc:
        cases = [
            ("nope", "invalid_json"),
            ("[]", "invalid_frame"),
            (json.dumps({"event": "fly"}), "unknown_event"),
            (json.dumps({"event": "agent.register", "agent_id": "bad id"}), "invalid_agent_id"),
            (
                json.dumps({"event": "agent.register", "agent_id": "x", "config": {"answer": "telepathy"}}),
                "invalid_config",
            ),
            (
                json.dumps({"event": "agent.register", "agent_id": "x", "config": {}, "last_seq": -1}),
                "invalid_frame",
            ),
            (
                json.dumps({"event": "reply.chunk", "session_id": "s", "message_id": "m", "token": "x"}),
                "unknown_turn",
            ),
            (
                json.dumps({"event": "tool.result", "session_id": "s", "tool_call_id": "c", "result": 1}),
                "unknown_tool_call",
            ),
            (json.dumps({"event": "session.end", "session_id": "chat-nope"}), "unknown_session"),
        ]
        for raw, code in cases:
            await proc.send(raw)
            frame = await recv(proc)
            assert frame["event"] == "error" and frame["code"] == code, (raw, frame)
        await proc.send(json.dumps({"event": "ping", "request_id": "r1"}))
        assert await recv(proc) == {"event": "pong"}


async def test_bad_key_closes_4401(gateway: Running) -> None:
    async with process(gateway, key="sk_wrong") as proc:
        with pytest.raises(ConnectionClosed) as info:
            await recv(proc)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401


async def test_process_tools_and_session_commands(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script(
            [
                tool_reply([("call-1", "lookupOrder", '{"orderId": "7"}')]),
                text_reply("It is on its way"),
                text_reply("second"),
            ]
        )
        async with run_gateway(make_settings(sqlite_url)) as g, process(g) as proc:
            config = {
                "prompt": "Hello {{name}}.",
                "llm": {"base_url": fake.url, "model": "m"},
                "tools": [{"name": "lookupOrder", "parameters": {"type": "object"}}],
                "allowed_origins": ["http://127.0.0.1:*"],
            }
            await register(proc, "shop", config=config)
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'shop')}") as chat:
                sid = (await recv(chat))["sessionId"]
                await proc.send(
                    json.dumps(
                        {
                            "event": "session.set_prompt_vars",
                            "session_id": sid,
                            "vars": {"name": "Ada"},
                            "request_id": "v",
                        }
                    )
                )
                assert (await until(proc, "ok"))[0]["request_id"] == "v"
                await proc.send(
                    json.dumps(
                        {
                            "event": "session.add_context",
                            "session_id": sid,
                            "text": "VIP customer",
                            "request_id": "c",
                        }
                    )
                )
                await until(proc, "ok")
                await chat.send(json.dumps({"event": "message", "text": "where is 7?"}))
                call, _ = await until(proc, "tool.call")
                assert call["name"] == "lookupOrder" and call["arguments"] == {"orderId": "7"}
                await proc.send(
                    json.dumps(
                        {
                            "event": "tool.result",
                            "session_id": sid,
                            "tool_call_id": call["tool_call_id"],
                            "result": {"eta": "today"},
                        }
                    )
                )
                done, _ = await until(chat, "chat.done")
                assert done["text"] == "It is on its way"
                await proc.send(
                    json.dumps({"event": "session.get_history", "session_id": sid, "request_id": "h"})
                )
                history, _ = await until(proc, "session.history")
                assert history["request_id"] == "h"
                assert [(m["role"], m["text"]) for m in history["messages"]] == [
                    ("user", "where is 7?"),
                    ("assistant", "It is on its way"),
                ]
                await proc.send(
                    json.dumps(
                        {
                            "event": "session.set_history",
                            "session_id": sid,
                            "request_id": "s",
                            "messages": [
                                {"role": "user", "text": "I am Ada"},
                                {"role": "assistant", "text": "Hi Ada"},
                            ],
                        }
                    )
                )
                await until(proc, "ok")
                await chat.send(json.dumps({"event": "message", "text": "next"}))
                await until(chat, "chat.done")
                await proc.send(json.dumps({"event": "session.end", "session_id": sid, "request_id": "e"}))
                await until(proc, "ok")
                ended, _ = await until(chat, "chat.ended")
                assert ended["reason"] == "closed"
    system = fake.bodies[0]["messages"][0]["content"]
    assert "Hello Ada." in system and "VIP customer" in system
    tool_msg = next(m for m in fake.bodies[1]["messages"] if m["role"] == "tool")
    assert json.loads(tool_msg["content"]) == {"eta": "today"}
    assert [(m["role"], m["content"]) for m in fake.bodies[2]["messages"][1:]] == [
        ("user", "I am Ada"),
        ("assistant", "Hi Ada"),
        ("user", "next"),
    ]


async def test_disconnect_fails_pending_work_and_reconnect_replays_what_was_missed(sqlite_url: str) -> None:
    agents = {"demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]}}
    settings = make_settings(sqlite_url, agents=agents)
    async with run_gateway(settings) as g:
        limits = {"process_reconnect_seconds": 0.5}
        cfg = {"allowed_origins": ["http://127.0.0.1:*"], "limits": limits}
        proc = await websockets.connect(
            f"{g.ws_url}/v1/agents/ws", additional_headers={"Authorization": f"Bearer {ADMIN}"}
        )
        registered = await register(proc, config=cfg)
        last_seq = registered["seq"]
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'byo')}") as chat:
            sid = (await recv(chat))["sessionId"]
            await chat.send(json.dumps({"event": "message", "text": "q1"}))
            turn, seen = await until(proc, "turn")
            last_seq = max([last_seq, *[e.get("seq", 0) for e in seen]])
            await proc.send(
                json.dumps(
                    {
                        "event": "reply.chunk",
                        "session_id": sid,
                        "message_id": turn["message_id"],
                        "token": "half",
                    }
                )
            )
            assert (await until(chat, "chat.token"))[0]["text"] == "half"
            await proc.close()  # the process is gone mid-reply
            err, _ = await until(chat, "chat.error")
            assert err["code"] == "agent_disconnected"
        messages = await g.runtime.store.messages(sid)
        assert [m.role for m in messages] == ["user"]  # nothing half-done is stored as a reply
        # With no process, a new turn waits process_reconnect_seconds, then fails clearly.
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'byo')}") as chat:
            sid2 = (await recv(chat))["sessionId"]
            await chat.send(json.dumps({"event": "message", "text": "anyone?"}))
            err, _ = await until(chat, "chat.error")
            assert err["code"] == "agent_process_unavailable"
        # Reconnecting with last_seq replays what happened meanwhile, then goes live.
        async with process(g) as proc:
            await proc.send(
                json.dumps(
                    {"event": "agent.register", "agent_id": "byo", "config": cfg, "last_seq": last_seq}
                )
            )
            caught, replayed = await until(proc, "stream.caughtUp")
            kinds = [(e["event"], e.get("sessionId")) for e in replayed]
            assert ("agent.disconnected", None) in kinds
            assert ("session.started", sid2) in kinds and ("user.message", sid2) in kinds
            assert ("session.error", sid2) in kinds
            assert all(e["seq"] > last_seq for e in replayed) and caught["seq"] == replayed[-1]["seq"]
            registered, _ = await until(proc, "agent.registered")


async def test_turn_waits_for_a_reconnecting_process(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g:
        cfg = {"allowed_origins": ["http://127.0.0.1:*"], "limits": {"process_reconnect_seconds": 10}}
        async with process(g) as proc:
            await register(proc, config=cfg)
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'byo')}") as chat:
            sid = (await recv(chat))["sessionId"]
            await chat.send(json.dumps({"event": "message", "text": "are you back?"}))
            await asyncio.sleep(0.3)
            async with process(g) as proc:
                await register(proc, config=cfg)
                turn, _ = await until(proc, "turn")
                await proc.send(
                    json.dumps(
                        {
                            "event": "reply.end",
                            "session_id": sid,
                            "message_id": turn["message_id"],
                            "text": "yes",
                        }
                    )
                )
                done, _ = await until(chat, "chat.done")
                assert done["text"] == "yes"


async def test_pending_tool_call_fails_cleanly_when_the_process_leaves(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([tool_reply([("c9", "slow", "{}")]), text_reply("sorry, the tool failed")])
        async with run_gateway(make_settings(sqlite_url)) as g:
            cfg = {
                "llm": {"base_url": fake.url, "model": "m"},
                "tools": [{"name": "slow"}],
                "allowed_origins": ["http://127.0.0.1:*"],
            }
            async with process(g) as proc:
                await register(proc, "toolish", config=cfg)
                chat = await websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'toolish')}")
                await recv(chat)
                await chat.send(json.dumps({"event": "message", "text": "use the tool"}))
                await until(proc, "tool.call")
            done, _ = await until(chat, "chat.done")
            assert done["text"] == "sorry, the tool failed"
            await chat.close()
    tool_msg = next(m for m in fake.bodies[1]["messages"] if m["role"] == "tool")
    assert json.loads(tool_msg["content"]) == {"error": "agent process disconnected"}
