"""Poison: lone surrogates, NULs and oversize fields through every edge, then everything that
reads them back (issue 11, item 3).

Through the public chat token (an anonymous visitor with an allowed Origin), the
HTTP API, the chat socket, a WhatsApp webhook and a Twilio webhook, hostile text
arrives; API callers get a 400 naming the field, provider text is made safe. Then
the sessions list, every session, `gateway export`, a feed replay from 0 and a
send all work, and the replay reaches the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.conftest import ADMIN, Running, SseReader, make_settings, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.fakes.twilio_server import FakeTwilio
from tests.twilio.helpers import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, signed_post
from tests.twilio.helpers import ENV as TWILIO_ENV
from tests.whatsapp.test_bad_messages import delivery
from tests.whatsapp.test_channel import ENV as WA_ENV
from tests.whatsapp.test_channel import number, post, wait_for

ORIGIN = "http://127.0.0.1:5555"
JSON = {"content-type": "application/json"}


def settings(db_url: str, graph: FakeGraph, twilio: FakeTwilio) -> Any:
    support = {
        "answer": "echo",
        "echo_delay_ms": 0,
        "whatsapp": [number(graph)],
        "twilio": [{"number": SMS_NUMBER, "api_base_url": twilio.base_url}],
    }
    demo = {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]}
    server = {"outbox_poll_seconds": 0.05, "outbox_retry_base_seconds": 0.05}
    return make_settings(db_url, agents={"support": support, "demo": demo}, server=server)


async def _refused(c: httpx.AsyncClient, path: str, body: str, field: str, **headers: str) -> None:
    r = await c.post(path, content=body.encode(), headers={**JSON, **headers})
    assert r.status_code == 400, (path, body[:80], r.text)
    assert f"`{field}" in r.json()["error"]["message"], r.text


async def _through_the_api(g: Running) -> None:
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as anonymous:  # a visitor's page
        for body, field in (
            ('{"agent": "demo", "metadata": {"plan": "x\\ud800"}}', "metadata.plan"),
            ('{"agent": "demo", "metadata": {"plan": "x\\u0000"}}', "metadata.plan"),
            ('{"agent": "demo", "metadata": {"userId": "' + "u" * 200 + '"}}', "metadata"),
            ('{"agent": "demo", "metadata": {"name": "' + "n" * 300 + '"}}', "metadata"),
        ):
            await _refused(anonymous, "/v1/tokens", body, field, origin=ORIGIN)
    async with g.client() as c:
        for body, field in (
            ('{"text": "hi", "metadata": {"plan": "x\\ud800"}}', "metadata.plan"),
            ('{"text": "hi\\u0000"}', "text"),
            ('{"text": "hi", "contact": {"id": "c1", "name": "' + "n" * 300 + '"}}', "contact"),
        ):
            await _refused(c, "/v1/agents/demo/messages", body, field)


async def _through_the_chat_socket(g: Running) -> str:
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as anonymous:
        r = await anonymous.post(
            "/v1/tokens",
            json={"agent": "demo", "metadata": {"userId": "visitor-1", "name": "Ada"}},
            headers={"origin": ORIGIN},
        )
        assert r.status_code == 201, r.text
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={r.json()['token']}") as ws:
        started = json.loads(await ws.recv())
        await ws.send('{"event": "message", "text": "x\\ud800"}')
        assert json.loads(await ws.recv())["code"] == "invalid_text"
        await ws.send('{"event": "message", "text": "fine"}')
        while json.loads(await ws.recv())["event"] != "chat.done":
            pass
    return str(started["sessionId"])


async def _through_whatsapp(g: Running) -> None:
    body = delivery(
        ("wamid.POISON1", "16505550011", "Ev\u0000e", "sur\ud800 and nul\u0000"),
        ("wamid." + "z" * 200, "16505550012", "Zed", "unusable id"),
    )
    assert (await post(g, body)).status_code == 200


async def _through_twilio(g: Running) -> None:
    good = {
        "MessageSid": "SM" + "a" * 32,
        "AccountSid": ACCOUNT_SID,
        "From": "+15557654399",
        "To": SMS_NUMBER,
        "Body": "nul\u0000 here",
        "ProfileName": "P" * 300,
    }
    r = await signed_post(g, "/twilio/messaging", good, token=AUTH_TOKEN)
    assert r.status_code == 200, r.text
    bad = {**good, "MessageSid": "SM" + "b" * 200, "Body": "unusable sid"}
    r = await signed_post(g, "/twilio/messaging", bad, token=AUTH_TOKEN)
    assert r.status_code == 200, r.text


async def _export(db_url: str, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "export.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "--database-url",
        db_url,
        "export",
        "-o",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


async def _replay_from_zero(g: Running) -> list[dict[str, Any]]:
    frames = []
    async with (
        httpx.AsyncClient(base_url=g.url, timeout=10) as c,
        c.stream(
            "GET", "/v1/events", headers={"authorization": f"Bearer {ADMIN}", "last-event-id": "0"}
        ) as r,
    ):
        assert r.status_code == 200
        reader = SseReader(r)
        while True:
            frame = await reader.next_event()
            if frame.get("event") == "stream.caughtUp":
                return frames
            frames.append(frame)


async def test_poison_through_every_edge_breaks_no_read(db_url: str, tmp_path: Path) -> None:
    env = {**WA_ENV, **TWILIO_ENV}
    async with (
        FakeGraph(token="test-token") as graph,
        FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as twilio,
        run_gateway(settings(db_url, graph, twilio), env=env) as g,
    ):
        await _through_the_api(g)
        chat_session = await _through_the_chat_socket(g)
        await _through_whatsapp(g)
        await _through_twilio(g)
        # The agent's answers to the made-safe messages went out (no sender crashed).
        await wait_for(lambda: len(graph.sent) == 1 and len(twilio.messages) == 1)
        assert graph.sent[0]["text"]["body"] == "sur\ufffd and nul"
        assert twilio.bodies() == ["nul here"]

        async with g.client() as c:
            listed = await c.get("/v1/sessions")
            assert listed.status_code == 200, listed.text
            sessions = listed.json()["sessions"]
            assert {s["channel"] for s in sessions} == {"chat", "whatsapp", "sms"}
            for s in sessions:
                one = await c.get(f"/v1/sessions/{s['sessionId']}")
                assert one.status_code == 200, one.text
            by_channel = {s["channel"]: s for s in sessions}
            assert by_channel["sms"]["contact"]["name"] == "P" * 255 + "…"
            assert by_channel["whatsapp"]["contact"]["name"] == "Eve"
            assert by_channel["chat"]["sessionId"] == chat_session
            # A send on each provider session after the poison.
            for channel in ("whatsapp", "sms"):
                sent = await c.post(
                    f"/v1/sessions/{by_channel[channel]['sessionId']}/messages", json={"text": "a human here"}
                )
                assert sent.status_code == 201, sent.text
        await wait_for(lambda: len(graph.sent) == 2 and len(twilio.messages) == 2)

        replayed = await _replay_from_zero(g)
        types = [f["event"] for f in replayed]
        assert types.count("webhook.rejected") == 2
        assert "user.message" in types and types[-1] in ("bot.message", "message.status", "webhook.rejected")
        last_seq = await g.runtime.store.last_seq()
        assert int(replayed[-1]["id"]) <= last_seq

        exported = await _export(db_url, tmp_path)
        assert len(exported) == len(sessions)
        texts = [m["text"] for rec in exported for m in rec["messages"]]
        assert "sur\ufffd and nul" in texts and "nul here" in texts


async def test_poison_stored_before_the_edges_were_safe_breaks_no_read(db_url: str, tmp_path: Path) -> None:
    """Rows written by an older gateway may hold a lone surrogate in a JSON column (the
    session's metadata, a message's parts, an event): every read still works."""
    from gateway.events import ContactRef, Event
    from gateway.types import Channel

    async with run_gateway(make_settings(db_url)) as g:
        store = g.runtime.store
        session, _ = await store.start_session(
            agent_id="demo",
            channel=Channel.API,
            contact=ContactRef(channel=Channel.API, address="legacy"),
            meta={"plan": "x\ud800", "\udfffkey": ["y\udc00"]},
        )
        await store.ingest_message(
            agent_id="demo",
            channel=Channel.API,
            text="hi",
            session_id=session.id,
            parts=[{"kind": "x\ud800"}],
        )
        await store.append_events(
            [Event(type="session.note", agent="demo", session_id=session.id, data={"note": "z\ud800"})]
        )
        async with g.client() as c:
            listed = await c.get("/v1/sessions")
            assert listed.status_code == 200, listed.text
            row = listed.json()["sessions"][0]
            assert row["metadata"] == {"plan": "x\ufffd", "\ufffdkey": ["y\ufffd"]}
            one = await c.get(f"/v1/sessions/{session.id}")
            assert one.status_code == 200, one.text
            assert one.json()["messages"][0]["parts"] == [{"kind": "x\ufffd"}]
            assert (await c.get("/v1/contacts/legacy/sessions")).status_code == 200
        replayed = await _replay_from_zero(g)
        assert [f["event"] for f in replayed][-1] == "session.note"
        assert replayed[-1]["json"]["note"] == "z\ufffd"
        exported = await _export(db_url, tmp_path)
        assert exported[0]["metadata"]["plan"] == "x\ufffd"
