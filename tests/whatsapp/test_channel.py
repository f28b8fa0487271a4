"""The WhatsApp channel end to end: signed webhooks in, a real gateway, a fake Graph API out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.whatsapp.signature import sign
from gateway.store.sql import SessionQuery
from tests.conftest import Running, SseReader, make_settings, run_gateway, session_record
from tests.fakes.graph_server import FakeGraph
from tests.fakes.openai_server import FakeOpenAI, text_reply

FIXTURES = Path(__file__).parent / "fixtures"
PNID = "106540352242922"
OTHER_PNID = "106540352242999"
SECRET = "app-secret-1"
OTHER_SECRET = "app-secret-2"
ENV = {"WA_TOKEN": "test-token", "WA_SECRET": SECRET, "WA_SECRET_2": OTHER_SECRET}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def number(graph: FakeGraph, pnid: str = PNID, secret_env: str = "WA_SECRET", **extra: Any) -> dict[str, Any]:
    return {
        "phone_number_id": pnid,
        "access_token_env": "WA_TOKEN",
        "app_secret_env": secret_env,
        "verify_token": "verify-me",
        "graph_base_url": graph.base_url,
        "graph_version": graph.version,
        **extra,
    }


def settings(sqlite_url: str, graph: FakeGraph, **agent: Any) -> Any:
    support = {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)], **agent}
    other = {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph, OTHER_PNID, "WA_SECRET_2")]}
    dev = {"answer": "echo", "echo_delay_ms": 0, "prompt": "dev"}
    server = {"outbox_poll_seconds": 0.05, "outbox_retry_base_seconds": 0.05, "limits_sweep_seconds": 0.1}
    return make_settings(
        sqlite_url, agents={"support": support, "other": other, "dev-berna-support": dev}, server=server
    )


@asynccontextmanager
async def whatsapp_gateway(sqlite_url: str, **agent: Any) -> AsyncIterator[tuple[Running, FakeGraph]]:
    async with FakeGraph(token="test-token") as graph:
        async with run_gateway(settings(sqlite_url, graph, **agent), env=ENV) as g:
            yield g, graph


def text_webhook(wamid: str, body: str = "hello", sender: str = "16505551234", pnid: str = PNID) -> bytes:
    obj = json.loads(fixture_bytes("text"))
    value = obj["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = pnid
    value["contacts"][0]["wa_id"] = sender
    value["messages"][0].update({"id": wamid, "text": {"body": body}, "from": sender})
    return json.dumps(obj).encode()


def status_webhook(
    wamid: str,
    status: str,
    *,
    error: dict[str, Any] | None = None,
    pnid: str = PNID,
    opaque: str | None = None,
) -> bytes:
    st: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": "1749416400",
        "recipient_id": "16505551234",
    }
    if error:
        st["errors"] = [error]
    if opaque:
        st["biz_opaque_callback_data"] = opaque
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": pnid},
        "statuses": [st],
    }
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    ).encode()


async def post(g: Running, body: bytes, secret: str | None = SECRET, **headers: str) -> httpx.Response:
    h = {"content-type": "application/json", **headers}
    if secret is not None:
        h["x-hub-signature-256"] = sign(body, secret)
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
        return await c.post("/whatsapp/webhook", content=body, headers=h)


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def sent_wamid(g: Running, message_id: str) -> str:
    """The wamid of a reply's first part, once the outbox recorded it."""
    async with asyncio.timeout(10):
        while True:
            parts = await g.runtime.store.outbox.outbox_for(message_id)
            if parts and parts[0]["providerMessageId"]:
                return str(parts[0]["providerMessageId"])
            await asyncio.sleep(0.02)


async def events(g: Running, **q: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in q.items())
    async with g.client() as c, c.stream("GET", f"/v1/events?lastEventId=0&{query}") as r:
        feed, out = SseReader(r), []
        while (f := await feed.next_event())["event"] != "stream.caughtUp":
            out.append(f["json"])
        return out


async def test_handshake(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, _graph), httpx.AsyncClient(base_url=g.url) as c:
        ok = await c.get(
            "/whatsapp/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"
        )
        assert (
            ok.status_code == 200
            and ok.text == "1158201444"
            and ok.headers["content-type"].startswith("text/plain")
        )
        bad = await c.get("/whatsapp/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")
        assert bad.status_code == 403


async def test_end_to_end_reply_statuses_and_feed(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        r = await post(g, text_webhook("wamid.IN1", "Hi **there**, is my order shipped?"))
        assert r.status_code == 200
        await wait_for(lambda: len(graph.sent) == 1)
        sent = graph.sent[0]
        assert sent["to"] == "+16505551234" and sent["type"] == "text"
        assert sent["text"]["body"] == "Hi *there*, is my order shipped?"  # markdown → WhatsApp
        assert sent["context"] == {"message_id": "wamid.IN1"}  # threaded to the user's message
        key = sent["biz_opaque_callback_data"]
        await wait_for(lambda: len(graph.read_marks) == 1)
        assert graph.read_marks[0]["message_id"] == "wamid.IN1"
        assert graph.read_marks[0]["typing_indicator"] == {"type": "text"}
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        assert session.id.startswith("wa-") and len(session.id) == 15
        messages = await g.runtime.store.messages(session.id)
        reply = messages[-1]
        wamid_out = await sent_wamid(g, reply.id)
        parts = await g.runtime.store.outbox.outbox_for(reply.id)
        assert parts[0]["status"] == "sent" and key == f"{reply.id}:0"
        # Out of order and duplicated statuses: read, then a late delivered, then read again.
        for status in ("read", "delivered", "read", "sent"):
            assert (await post(g, status_webhook(wamid_out, status))).status_code == 200
        record = (await g.runtime.store.messages(session.id))[-1]
        assert record.status == "read" and record.provider_message_id == wamid_out
        feed = await events(g, session=session.id)
    kinds = [e["event"] for e in feed]
    assert kinds[:3] == ["session.started", "user.message", "bot.message"]
    statuses = [e["status"] for e in feed if e["event"] == "message.status"]
    assert statuses == ["sent", "read"]  # never backwards, no duplicates
    user = feed[1]
    assert user["type"] == "text" and user["paused"] is False and user["contact"]["name"] == "Sheena Nelson"


async def test_signatures_are_enforced_and_nothing_is_stored(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, _graph):
        body = text_webhook("wamid.SIG")
        assert (await post(g, body, secret=None)).status_code == 401
        assert (await post(g, body, secret="wrong")).status_code == 401
        assert (await post(g, body, secret=None, **{"x-hub-signature-256": "sha256=zz"})).status_code == 401
        # A valid signature from the other app does not own this number.
        assert (await post(g, body, secret=OTHER_SECRET)).status_code == 401
        assert all(e.type != "user.message" for e in await g.runtime.store.events_after(0))
        # The other app's own number is fine.
        assert (
            await post(g, text_webhook("wamid.OTHER", pnid=OTHER_PNID), secret=OTHER_SECRET)
        ).status_code == 200


async def test_insecure_number_accepts_unsigned(sqlite_url: str) -> None:
    async with FakeGraph(token="test-token") as graph:
        agents = {
            "support": {
                "answer": "echo",
                "echo_delay_ms": 0,
                "whatsapp": [number(graph, secret_env="NOPE", insecure_skip_signature=True)],
            }
        }
        async with run_gateway(make_settings(sqlite_url, agents=agents), env=ENV) as g:
            assert (await post(g, text_webhook("wamid.U1"), secret=None)).status_code == 200
            await wait_for(lambda: len(graph.sent) == 1)


async def test_redelivery_is_acknowledged_and_ignored(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        body = text_webhook("wamid.DUP", "once")
        results = await asyncio.gather(*(post(g, body) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
        await wait_for(lambda: len(graph.sent) >= 1)
        await asyncio.sleep(0.3)
        assert len(graph.sent) == 1
        user_messages = [e for e in await g.runtime.store.events_after(0) if e.type == "user.message"]
        assert len(user_messages) == 1


async def test_bad_bodies_get_clear_4xx(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, _graph):
        assert (await post(g, b"{truncated")).status_code == 400
        assert (await post(g, b"[1, 2]")).status_code == 400
        assert (await post(g, json.dumps({"object": "page", "entry": []}).encode())).status_code == 400
        big = b'{"object": "whatsapp_business_account", "entry": [], "pad": "' + b"x" * 3_200_000 + b'"}'
        assert (await post(g, big)).status_code == 413
        odd = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "metadata": {"phone_number_id": PNID},
                                "messages": [{"type": "text"}, "junk", {"id": 5}],
                            },
                        }
                    ]
                }
            ],
        }
        assert (await post(g, json.dumps(odd).encode())).status_code == 200  # bad parts recorded, never 5xx


async def test_unroutable_number_is_acknowledged_and_recorded(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        # Signed by a known app, for a number nobody configured.
        r = await post(g, text_webhook("wamid.NOBODY", pnid="999999999999"))
        assert r.status_code == 200
        recorded = [e for e in await g.runtime.store.events_after(0) if e.type == "webhook.unroutable"]
        assert recorded and recorded[0].data["phoneNumberId"] == "999999999999"
        assert graph.sent == []


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in FIXTURES.glob("*.json") if not p.stem.startswith("status"))
)
async def test_every_fixture_is_accepted_and_normalized(sqlite_url: str, name: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, _graph):
        raw = fixture_bytes(name)
        obj = json.loads(raw)
        for entry in obj.get("entry", []):
            for change in entry.get("changes", []):
                change.get("value", {}).get("metadata", {})["phone_number_id"] = PNID
        body = json.dumps(obj).encode()
        r = await post(g, body)
        assert r.status_code == 200, r.text
        user = [e for e in await g.runtime.store.events_after(0) if e.type == "user.message"]
        if name in ("referral", "mixed") or user:
            for e in user:
                assert e.data["type"] in {
                    "text",
                    "audio",
                    "image",
                    "video",
                    "document",
                    "sticker",
                    "location",
                    "contacts",
                    "interactive",
                    "reaction",
                    "unsupported",
                }
                assert isinstance(e.data["text"], str)


async def test_reaction_is_recorded_on_the_message_without_a_turn(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        await post(g, text_webhook("wamid.R0", "hi"))
        await wait_for(lambda: len(graph.sent) == 1)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        reply = (await g.runtime.store.messages(session.id))[-1]
        out = [{"providerMessageId": await sent_wamid(g, reply.id)}]
        react = json.loads(fixture_bytes("reaction"))
        value = react["entry"][0]["changes"][0]["value"]
        value["metadata"]["phone_number_id"] = PNID
        value["messages"][0]["from"] = "16505551234"
        value["messages"][0]["reaction"]["message_id"] = out[0]["providerMessageId"]
        assert (await post(g, json.dumps(react).encode())).status_code == 200
        await asyncio.sleep(0.3)
        assert len(graph.sent) == 1  # no agent turn for a reaction
        annotated = await g.runtime.store.messages(session.id)
        target = next(m for m in annotated if m.id == reply.id)
        assert target.meta and target.meta["reaction"]["emoji"]


async def test_retries_on_5xx_and_rate_limits_then_sends_once(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        graph.fail_next(2, 500, 131000, "Something went wrong", on="messages")
        graph.fail_next(1, 429, 130429, "Rate limit hit", on="messages")
        await post(g, text_webhook("wamid.RETRY", "retry me"))
        await wait_for(lambda: len(graph.sent) == 1, timeout=15)
        await asyncio.sleep(0.3)
        assert len(graph.sent) == 1 and graph.sent[0]["text"]["body"] == "retry me"


async def test_window_failure_closes_the_window_and_templates_still_go(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        await post(g, text_webhook("wamid.W1", "hi"))
        await wait_for(lambda: len(graph.sent) == 1)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        reply = (await g.runtime.store.messages(session.id))[-1]
        wamid = await sent_wamid(g, reply.id)
        error = {
            "code": 131047,
            "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {"details": "Message failed to send because more than 24 hours have passed"},
        }
        await post(g, status_webhook(wamid, "failed", error=error))
        failed = (await g.runtime.store.messages(session.id))[-1]
        assert failed.status == "failed" and failed.error and failed.error["code"] == 131047
        assert (await g.runtime.store.session(session.id)).window_closed_at is not None  # type: ignore[union-attr]
        # A late `delivered` never resurrects a failed message.
        await post(g, status_webhook(wamid, "delivered"))
        assert (await g.runtime.store.messages(session.id))[-1].status == "failed"
        async with g.client() as c:
            r = await c.post(
                f"/v1/sessions/{session.id}/template",
                json={
                    "name": "order_update",
                    "language": "en_US",
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
                },
            )
            assert r.status_code == 202
        await wait_for(lambda: len(graph.sent) == 2)
        assert graph.sent[1]["type"] == "template" and graph.sent[1]["template"]["name"] == "order_update"


async def test_outbound_conversation_by_template(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph), g.client() as c:
        r = await c.post(
            "/v1/agents/support/whatsapp/messages",
            json={"to": "+34600111222", "template": {"name": "hello_world", "language": "en_US"}},
        )
        assert r.status_code == 202, r.text
        sid = r.json()["sessionId"]
        await wait_for(lambda: len(graph.sent) == 1)
        assert graph.sent[0]["to"] == "+34600111222" and graph.sent[0]["template"]["name"] == "hello_world"
        record = (await c.get(f"/v1/sessions/{sid}")).json()
        assert record["direction"] == "outbound" and record["channel"] == "whatsapp"
        assert (await c.post("/v1/agents/support/whatsapp/messages", json={"to": "+1"})).status_code == 400
        assert (
            await c.post("/v1/agents/support/whatsapp/messages", json={"template": {"name": "x"}})
        ).status_code == 400


async def test_dev_routes_send_a_tester_to_the_dev_agent(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url, dev_routes={"+34600123456": "dev-berna-support"}) as (g, graph):
        await post(g, text_webhook("wamid.D1", "from dev", sender="34600123456"))
        await post(g, text_webhook("wamid.D2", "from customer", sender="16505551234"))
        await wait_for(lambda: len(graph.sent) == 2)
        rows = await g.runtime.store.sessions(SessionQuery())
        by_contact = {s.contact.address: s.agent_id for s in rows if s.contact}
        assert by_contact == {"34600123456": "dev-berna-support", "16505551234": "support"}


async def test_idle_timeout_ends_the_session_and_a_returning_contact_gets_history(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("first answer"), text_reply("welcome back")])
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "limits": {"idle_timeout_seconds": 1},
        }
        async with whatsapp_gateway(sqlite_url, **agent) as (g, graph):
            await post(g, text_webhook("wamid.H1", "my name is Ada"))
            await wait_for(lambda: len(graph.sent) == 1)
            first = (await g.runtime.store.sessions(SessionQuery()))[0]
            async with asyncio.timeout(5):
                while (await g.runtime.store.session(first.id)).status != "ended":  # type: ignore[union-attr]
                    await asyncio.sleep(0.1)
            ended = await g.runtime.store.session(first.id)
            assert ended is not None and ended.end_reason == "idle_timeout"
            await post(g, text_webhook("wamid.H2", "hello again"))
            await wait_for(lambda: len(graph.sent) == 2)
            rows = await g.runtime.store.sessions(SessionQuery())
            assert len(rows) == 2 and rows[0].id != first.id
    history = [(m["role"], m["content"]) for m in llm.bodies[1]["messages"] if m["role"] != "system"]
    assert history == [("user", "my name is Ada"), ("assistant", "first answer"), ("user", "hello again")]


async def test_progressive_mode_sends_each_paragraph_when_it_is_complete(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("First paragraph.", "\n\n", "Second ", "paragraph ", "is slow.", delay=0.3)])
        agent = {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}, "progressive": True}
        async with whatsapp_gateway(sqlite_url, **agent) as (g, graph):
            await post(g, text_webhook("wamid.P1", "tell me"))
            await wait_for(lambda: len(graph.sent) == 1)
            session = (await g.runtime.store.sessions(SessionQuery()))[0]
            # The first paragraph is out while the reply is still being written.
            assert [m.role for m in await g.runtime.store.messages(session.id)] == ["user"]
            assert graph.sent[0]["text"]["body"] == "First paragraph."
            assert graph.sent[0]["context"] == {"message_id": "wamid.P1"}
            await wait_for(lambda: len(graph.sent) == 2)
            assert (
                graph.sent[1]["text"]["body"] == "Second paragraph is slow."
                and "context" not in graph.sent[1]
            )
            reply = (await g.runtime.store.messages(session.id))[-1]
            assert reply.text == "First paragraph.\n\nSecond paragraph is slow."


def voice_webhook() -> bytes:
    obj = json.loads(fixture_bytes("audio_voice"))
    obj["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = PNID
    return json.dumps(obj).encode()


async def test_voice_notes_are_downloaded_and_transcribed(sqlite_url: str) -> None:
    async with FakeOpenAI() as stt:
        heard: list[Any] = []

        def transcribe(request: Any) -> Any:
            heard.append(request)
            from tests.fakes.scripted_http import Reply

            return Reply(
                headers={"content-type": "application/json"},
                pieces=[b'{"text": "change my order"}'],
                chunked=False,
            )

        stt.route("/v1/audio/transcriptions", transcribe)
        agent = {"transcriber": {"base_url": stt.url, "model": "whisper-1"}}
        async with whatsapp_gateway(sqlite_url, **agent) as (g, graph):
            graph.add_media("2754859441498128", b"OggS-fake-opus", "audio/ogg")
            assert (await post(g, voice_webhook())).status_code == 200
            await wait_for(lambda: len(graph.sent) == 1)
            assert graph.sent[0]["text"]["body"] == "[voice note] change my order"
            session = (await g.runtime.store.sessions(SessionQuery()))[0]
            user = (await g.runtime.store.messages(session.id))[0]
            assert user.text == "[voice note] change my order" and user.meta and user.meta["transcribed"]
    assert b"OggS-fake-opus" in heard[0].body and b"whisper-1" in heard[0].body
    media_fetch = [r for r in graph.requests if r.path.startswith("/media/")]
    assert media_fetch and media_fetch[0].headers["authorization"] == "Bearer test-token"


async def test_voice_note_without_a_transcriber_reads_as_a_marker(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url) as (g, graph):
        assert (await post(g, voice_webhook())).status_code == 200
        await wait_for(lambda: len(graph.sent) == 1)
        assert graph.sent[0]["text"]["body"] == "[voice note]"


async def test_window_rules() -> None:
    from gateway.limits import whatsapp_window_open as open_

    def session(last_inbound: int | None, closed: int | None = None) -> Any:
        return session_record(last_inbound_at=last_inbound, window_closed_at=closed)

    day = 24 * 3600 * 1000
    assert open_(session(1_000), 1_000 + day - 1)
    assert not open_(session(1_000), 1_000 + day)
    assert not open_(session(None), 5)
    assert not open_(session(1_000, closed=2_000), 3_000)  # a 131047 closed it
    assert open_(session(4_000, closed=2_000), 5_000)  # the user wrote again


async def test_window_expiry_ends_the_session(sqlite_url: str) -> None:
    async with whatsapp_gateway(sqlite_url, limits={"idle_timeout_seconds": 10 * 24 * 3600}) as (g, graph):
        await post(g, text_webhook("wamid.E1", "hi"))
        await wait_for(lambda: len(graph.sent) == 1)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        # Pretend the user last wrote 25 hours ago (the data the sweeper reads).
        from sqlalchemy import update

        from gateway.store.models import SessionRow

        async with g.runtime.store.engine.begin() as conn:
            await conn.execute(
                update(SessionRow)
                .where(SessionRow.id == session.id)
                .values(last_inbound_at=SessionRow.last_inbound_at - 25 * 3600 * 1000)
            )
        async with asyncio.timeout(5):
            while (await g.runtime.store.session(session.id)).status != "ended":  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        ended = await g.runtime.store.session(session.id)
        assert ended is not None and ended.end_reason == "window_expired"
        feed = await events(g, session=session.id)
        assert feed[-1]["event"] == "session.ended" and feed[-1]["reason"] == "window_expired"


async def test_voice_notes_are_transcribed_while_paused(sqlite_url: str) -> None:
    async with FakeOpenAI() as stt:
        from tests.fakes.scripted_http import Reply

        stt.route(
            "/v1/audio/transcriptions",
            lambda _r: Reply(
                headers={"content-type": "application/json"},
                pieces=[b'{"text": "call me please"}'],
                chunked=False,
            ),
        )
        agent = {"transcriber": {"base_url": stt.url, "model": "whisper-1"}}
        async with whatsapp_gateway(sqlite_url, **agent) as (g, graph), g.client() as c:
            graph.add_media("2754859441498128", b"OggS-fake-opus", "audio/ogg")
            await c.post("/v1/agents/support/pause")
            assert (await post(g, voice_webhook())).status_code == 200
            session = (await g.runtime.store.sessions(SessionQuery()))[0]
            async with asyncio.timeout(10):
                while (await g.runtime.store.messages(session.id))[0].text == "[voice note]":
                    await asyncio.sleep(0.05)
            assert (await g.runtime.store.messages(session.id))[0].text == "[voice note] call me please"
            assert graph.sent == [] and graph.read_marks == []  # no reply, no typing indicator
