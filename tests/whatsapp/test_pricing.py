"""2026 platform changes (issue 16, item 8): per-message pricing from the statuses, exposed per
session and per agent (API and /metrics), and a bound on how many WhatsApp messages one reply
may become. Status payloads are written from Meta's status webhook reference."""

from __future__ import annotations

import json
from typing import Any

from gateway.store.sql import SessionQuery
from tests.conftest import Running
from tests.fakes.openai_server import FakeOpenAI, text_reply
from tests.whatsapp.test_channel import PNID, post, sent_wamid, text_webhook, wait_for, whatsapp_gateway


def status(
    wamid: str, state: str, *, pricing: dict[str, Any] | None, conversation: dict[str, Any] | None = None
) -> bytes:
    st: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": "1750263773",
        "recipient_id": "16505551234",
    }
    if conversation is not None:
        st["conversation"] = conversation
    if pricing is not None:
        st["pricing"] = pricing
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        "statuses": [st],
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(doc).encode()


SERVICE = {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}
MARKETING = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"}
ENTRY = {
    "id": "5f4a7fbc2a5a3ad9c4d4c5b2f1c0a9e8",
    "origin": {"type": "referral_conversion"},
    "expiration_timestamp": "1750350173",
}


async def reply_wamids(g: Running, session_id: str) -> list[str]:
    out = []
    for m in await g.runtime.store.messages(session_id):
        if m.role == "assistant":
            out.append(await sent_wamid(g, m.id))
    return out


async def test_pricing_is_kept_per_message_and_counted_per_session_and_agent(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, graph):
        await post(g, text_webhook("wamid.PR1", "hello"))
        await wait_for(lambda: len(graph.sent) == 1)
        await post(g, text_webhook("wamid.PR2", "again"))
        await wait_for(lambda: len(graph.sent) == 2)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        first, second = await reply_wamids(g, session.id)
        # Meta sends pricing with `sent` and again with `delivered` or `read`: counted once.
        for body in (
            status(first, "sent", pricing=SERVICE),
            status(first, "delivered", pricing=SERVICE),
            status(second, "sent", pricing=MARKETING, conversation=ENTRY),
            status(second, "read", pricing=MARKETING),
        ):
            assert (await post(g, body)).status_code == 200
        parts = await g.runtime.store.outbox.outbox_for((await g.runtime.store.messages(session.id))[-1].id)
        assert parts
        async with g.client() as c:
            per_session = (await c.get(f"/v1/sessions/{session.id}/pricing")).json()
            per_agent = (await c.get("/v1/agents/support/pricing")).json()
            metrics = (await c.get("/metrics")).text
            unknown = await c.get("/v1/sessions/wa-000000000000/pricing")
        expected = {
            "sent": 2,
            "priced": 2,
            "billable": 1,
            "categories": {"marketing": 1, "service": 1},
            "types": {"free_customer_service": 1, "regular": 1},
        }
        assert per_session == {"sessionId": session.id, "agent": "support", **expected}
        assert per_agent == {"agent": "support", "since": None, "until": None, **expected}
        assert unknown.status_code == 404
        service = 'agent="support",category="service",type="free_customer_service"'
        assert f"gateway_whatsapp_priced_messages_total{{{service}}} 1.0" in metrics
        assert (
            'gateway_whatsapp_priced_messages_total{agent="support",category="marketing",type="regular"} 1.0'
            in metrics
        )
        row = await g.runtime.store.pricing.summary(agent_id="other")
        assert row["sent"] == 0


async def test_pricing_and_conversation_objects_are_kept_whole(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, graph):
        await post(g, text_webhook("wamid.PK1", "hello"))
        await wait_for(lambda: len(graph.sent) == 1)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        (wamid,) = await reply_wamids(g, session.id)
        await post(g, status(wamid, "sent", pricing=MARKETING, conversation=ENTRY))
        from sqlalchemy import select

        from gateway.store.models import OutboxRow

        async with g.runtime.store._read() as s:
            row = await s.scalar(select(OutboxRow).where(OutboxRow.provider_message_id == wamid))
        assert row is not None
        assert row.pricing == {**MARKETING, "conversation": ENTRY}
        assert (row.pricing_category, row.pricing_type, row.pricing_billable) == (
            "marketing",
            "regular",
            True,
        )


async def test_a_reply_becomes_at_most_max_reply_messages(db_url: str) -> None:
    paragraphs = ["One.", "Two.", "Three.", "Four."]
    async with FakeOpenAI() as llm:
        llm.script([text_reply("One.", "\n\n", "Two.", "\n\n", "Three.", "\n\n", "Four.", delay=0.05)])
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "progressive": True,
            "limits": {"max_reply_messages": 2},
        }
        async with whatsapp_gateway(db_url, **agent) as (g, graph):
            await post(g, text_webhook("wamid.MX1", "tell me"))
            await wait_for(lambda: len(graph.sent) == 2)
            session = (await g.runtime.store.sessions(SessionQuery()))[0]
            reply = (await g.runtime.store.messages(session.id))[-1]
            assert reply.text == "\n\n".join(paragraphs)  # the stored reply is whole
        bodies = [m["text"]["body"] for m in graph.sent]
        assert bodies == ["One.", "Two.\n\nThree.\n\nFour."]


async def test_a_reply_too_long_for_the_bound_is_cut_in_its_last_message(db_url: str) -> None:
    long_text = " ".join(["word"] * 3000)  # about 15,000 characters: four messages unbounded
    async with FakeOpenAI() as llm:
        llm.script([text_reply(long_text)])
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "limits": {"max_reply_messages": 2},
        }
        async with whatsapp_gateway(db_url, **agent) as (g, graph):
            await post(g, text_webhook("wamid.MX2", "talk"))
            await wait_for(lambda: len(graph.sent) == 2)
        bodies = [m["text"]["body"] for m in graph.sent]
        assert len(bodies) == 2 and all(len(b) <= 4096 for b in bodies)
        assert bodies[1].endswith("…")
