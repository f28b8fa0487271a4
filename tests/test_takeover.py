"""Human takeover: pause / resume at three levels on every channel, human messages, escalation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import websockets

from gateway.store.sql import SessionQuery
from tests.conftest import ADMIN, Running, make_settings, mint, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.fakes.openai_server import FakeOpenAI, text_reply, tool_reply
from tests.whatsapp.test_channel import ENV, post, settings, text_webhook, wait_for, whatsapp_gateway


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def until(ws: Any, event: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws)
        if frame["event"] == event:
            return frame, seen
        seen.append(frame)


async def wait_for_count(g: Running, session_id: str, n: int) -> None:
    async with asyncio.timeout(10):
        while len(await g.runtime.store.messages(session_id)) < n:
            await asyncio.sleep(0.02)


async def event_types(g: Running, session_id: str) -> list[dict[str, Any]]:
    return [e.to_wire() for e in await g.runtime.store.events_after(0, session_id=session_id, limit=1000)]


async def test_chat_session_pause_human_message_and_resume_with_history(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("AI one"), text_reply("AI two")])
        agents = {"support": {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}}}
        async with run_gateway(make_settings(sqlite_url, agents=agents)) as g, g.client() as c:
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'support')}") as ws:
                sid = (await recv(ws))["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": "hello"}))
                assert (await until(ws, "chat.done"))[0]["text"] == "AI one"
                assert (await c.post(f"/v1/sessions/{sid}/pause")).json() == {
                    "sessionId": sid,
                    "paused": True,
                }
                assert (await c.post(f"/v1/sessions/{sid}/pause")).status_code == 200  # idempotent
                await ws.send(json.dumps({"event": "message", "text": "I want a person"}))
                await wait_for_count(g, sid, 3)  # stored before the operator answers
                r = await c.post(f"/v1/sessions/{sid}/messages", json={"text": "Hi, I am Marta from support"})
                assert r.status_code == 201 and r.json()["source"] == "human"
                human, seen = await until(ws, "chat.message")
                assert human["source"] == "human" and human["text"] == "Hi, I am Marta from support"
                assert not [
                    f for f in seen if f["event"] in ("chat.token", "chat.done")
                ]  # no AI while paused
                assert (await c.post(f"/v1/sessions/{sid}/resume")).json()["paused"] is False
                await ws.send(json.dumps({"event": "message", "text": "thanks"}))
                assert (await until(ws, "chat.done"))[0]["text"] == "AI two"
            events = await event_types(g, sid)
            record = (await c.get(f"/v1/sessions/{sid}")).json()
    paused_msg = next(e for e in events if e["event"] == "user.message" and e["text"] == "I want a person")
    assert paused_msg["paused"] is True
    kinds = [e["event"] for e in events]
    assert kinds.count("session.paused") == 1 and kinds.count("session.resumed") == 1
    human_event = next(e for e in events if e["event"] == "bot.message" and e["source"] == "human")
    assert human_event["author"] == "admin"
    # The AI sees the human's words as its own earlier reply.
    history = [(m["role"], m["content"]) for m in llm.bodies[1]["messages"] if m["role"] != "system"]
    assert history == [
        ("user", "hello"),
        ("assistant", "AI one"),
        ("user", "I want a person"),
        ("assistant", "Hi, I am Marta from support"),
        ("user", "thanks"),
    ]
    assert [(m["role"], m["source"]) for m in record["messages"]][3] == ("assistant", "human")


async def test_contact_level_pause_covers_later_sessions_and_survives_restart(sqlite_url: str) -> None:
    async with FakeGraph(token="test-token") as graph:
        cfg = settings(sqlite_url, graph)
        async with run_gateway(cfg, env=ENV) as g, g.client() as c:
            r = await c.post("/v1/agents/support/pause", json={"contact": "16505551234"})
            assert r.status_code == 200 and r.json()["contact"] == "16505551234"
        async with run_gateway(cfg, env=ENV) as g, g.client() as c:  # restarted: pause is data
            await post(g, text_webhook("wamid.C1", "anyone?"))
            await asyncio.sleep(0.5)
            assert graph.sent == []
            session = (await g.runtime.store.sessions(SessionQuery()))[0]
            assert session.paused  # a session that started after the pause is covered
            user = next(e for e in await event_types(g, session.id) if e["event"] == "user.message")
            assert user["paused"] is True
            # Another contact is not affected.
            await post(g, text_webhook("wamid.C2", "me too", sender="34600999888"))
            await wait_for(lambda: len(graph.sent) == 1)
            # The human answers on WhatsApp through the outbox.
            r = await c.post(f"/v1/sessions/{session.id}/messages", json={"text": "A human here"})
            assert r.status_code == 201
            await wait_for(lambda: len(graph.sent) == 2)
            assert graph.sent[1]["to"] == "+16505551234" and graph.sent[1]["text"]["body"] == "A human here"
            assert (
                await c.post("/v1/agents/support/resume", json={"contact": "16505551234"})
            ).status_code == 200
            await post(g, text_webhook("wamid.C3", "back to AI"))
            await wait_for(lambda: len(graph.sent) == 3)
            assert graph.sent[2]["text"]["body"] == "back to AI"


async def test_agent_level_pause_and_global_resume_clears_every_level(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph), g.client() as c:
        await c.post("/v1/agents/support/pause", json={"contact": "16505551234"})
        assert (await c.post("/v1/agents/support/pause")).status_code == 200
        await post(g, text_webhook("wamid.A1", "one", sender="34600000001"))
        await asyncio.sleep(0.4)
        assert graph.sent == []
        assert (await c.post("/v1/agents/support/resume")).json()["paused"] is False
        await post(g, text_webhook("wamid.A2", "two", sender="16505551234"))  # its contact pause is gone too
        await wait_for(lambda: len(graph.sent) == 1)
        assert graph.sent[0]["text"]["body"] == "two"


async def test_pause_racing_an_inbound_message_gives_a_full_reply_or_none(sqlite_url: str) -> None:
    agents = {"demo": {"answer": "echo", "echo_delay_ms": 5, "allowed_origins": ["http://127.0.0.1:*"]}}
    async with run_gateway(make_settings(sqlite_url, agents=agents)) as g, g.client() as c:
        text = " ".join(f"w{i}" for i in range(12))
        for round_ in range(15):
            r = await c.post("/v1/agents/demo/messages", json={"text": "start", "contact": f"race-{round_}"})
            sid = r.json()["sessionId"]

            async def inbound(session_id: str) -> None:
                await c.post(
                    "/v1/agents/demo/messages", json={"text": text, "sessionId": session_id}, timeout=5
                )

            task = asyncio.create_task(inbound(sid))
            await asyncio.sleep(0.004 * round_)  # pause at every point of the reply, round by round
            await c.post(f"/v1/sessions/{sid}/pause")
            await asyncio.wait_for(task, 10) if not task.done() else None
            messages = await g.runtime.store.messages(sid)
            replies = [m.text for m in messages if m.role == "assistant"]
            assert replies in (["start"], ["start", text]), replies  # never half a reply
            assert not any(m.pending for m in messages)


async def test_bad_takeover_requests(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph), g.client() as c:
        assert (await c.post("/v1/sessions/wa-000000000000/pause")).status_code == 404
        await post(g, text_webhook("wamid.B1", "hi"))
        await wait_for(lambda: len(graph.sent) == 1)
        sid = (await g.runtime.store.sessions(SessionQuery()))[0].id
        await g.runtime.service.end_session(sid, "closed")
        r = await c.post(f"/v1/sessions/{sid}/pause")
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_ended"
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"text": "late"})
        assert r.status_code == 409
        assert (await c.post("/v1/agents/ghost/pause")).status_code == 404
        async with httpx.AsyncClient(base_url=g.url) as anon:
            assert (await anon.post(f"/v1/sessions/{sid}/pause")).status_code == 401
        # A human message outside the 24-hour window is refused before calling Meta.
        await post(g, text_webhook("wamid.B2", "hi again"))
        await wait_for(lambda: len(graph.sent) == 2)
        sid2 = (await g.runtime.store.sessions(SessionQuery(status="active")))[0].id
        await g.runtime.store.outbox.close_window(sid2)
        r = await c.post(f"/v1/sessions/{sid2}/messages", json={"text": "hello?"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "window_closed"
        assert len(graph.sent) == 2
        r = await c.post(f"/v1/sessions/{sid2}/messages", json={"text": ""})
        assert r.status_code == 400


async def test_request_human_tool_pauses_and_alerts(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script(
            [
                tool_reply([("h1", "request_human", '{"reason": "refund over 500 EUR"}')]),
                text_reply("A colleague will be with you shortly."),
            ]
        )
        agents = {
            "support": {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}, "request_human": True}
        }
        async with run_gateway(make_settings(sqlite_url, agents=agents)) as g, g.client() as c:
            r = await c.post("/v1/agents/support/messages", json={"text": "I want my money back"})
            assert r.json()["text"] == "A colleague will be with you shortly."
            sid = r.json()["sessionId"]
            session = await g.runtime.store.session(sid)
            assert session is not None and session.paused
            listed = (await c.get(f"/v1/sessions/{sid}")).json()
            assert listed["attention"]["reason"] == "refund over 500 EUR" and listed["paused"] is True
            await c.post(f"/v1/sessions/{sid}/resume")
            assert (await c.get(f"/v1/sessions/{sid}")).json()["attention"] is None
            events = await event_types(g, sid)
    alert = next(e for e in events if e["event"] == "session.attentionRequested")
    assert alert["reason"] == "refund over 500 EUR"
    assert [t["function"]["name"] for t in llm.bodies[0]["tools"]] == ["request_human"]


async def test_agent_process_pause_resume_and_send(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=headers) as proc:
            cfg = {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]}
            await proc.send(json.dumps({"event": "agent.register", "agent_id": "ops", "config": cfg}))
            await until(proc, "agent.registered")
            async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, 'ops')}") as chat:
                sid = (await recv(chat))["sessionId"]
                await proc.send(
                    json.dumps(
                        {"event": "session.pause", "agent_id": "ops", "session_id": sid, "request_id": "p"}
                    )
                )
                confirm, _ = await until(proc, "session.paused")
                while "request_id" not in confirm:  # the persisted event is forwarded too
                    confirm, _ = await until(proc, "session.paused")
                assert confirm["session_id"] == sid and confirm["sessions"] == [sid]
                await proc.send(
                    json.dumps(
                        {
                            "event": "session.send",
                            "agent_id": "ops",
                            "session_id": sid,
                            "text": "from the process, as a human",
                        }
                    )
                )
                sent, _ = await until(proc, "session.sent")
                assert sent["message_id"].startswith("msg_")
                assert (await until(chat, "chat.message"))[0]["text"] == "from the process, as a human"
                await proc.send(json.dumps({"event": "session.resume", "agent_id": "ops"}))
                await until(proc, "session.resumed")
                await chat.send(json.dumps({"event": "message", "text": "echo me"}))
                assert (await until(chat, "chat.done"))[0]["text"] == "echo me"
