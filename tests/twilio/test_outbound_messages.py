"""`POST /v1/agents/{agent}/twilio/messages`: the business texts first; the contact's answer
continues that conversation."""

from __future__ import annotations

import json

from gateway.store.sql import SessionQuery
from tests.twilio.helpers import CALLER, SMS_NUMBER, WA_NUMBER, twilio_gateway, wait_for
from tests.twilio.test_messaging import WA_CALLER, one, post_in, sms

TEMPLATE = "HX" + "a" * 32


async def test_an_sms_conversation_started_by_the_business(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url, server={"public_url": "https://gw.example.com"}) as (g, fake):
        async with g.client() as c:
            r = await c.post(
                "/v1/agents/support/twilio/messages",
                json={
                    "to": CALLER,
                    "text": "Your order **A-17** has shipped.",
                    "metadata": {"order": "A-17"},
                },
            )
            assert r.status_code == 202, r.text
            sid = r.json()["sessionId"]
            assert sid.startswith("sms-") and r.json()["status"] == "queued"
        await wait_for(lambda: len(fake.messages) == 1)
        sent = fake.messages[0]
        assert one(sent, "To") == CALLER and one(sent, "From") == SMS_NUMBER
        assert one(sent, "Body") == "Your order A-17 has shipped."
        # The contact answers: same session, and the agent (echo) replies in it.
        assert (await post_in(g, sms("SM" + "r" * 32, "thanks!"))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 2)
        sessions = await g.runtime.store.sessions(SessionQuery())
        assert [s.id for s in sessions] == [sid] and sessions[0].direction == "outbound"
        assert sessions[0].meta == {"order": "A-17"}
        texts = [m.text for m in await g.runtime.store.messages(sid)]
        assert texts == ["Your order **A-17** has shipped.", "thanks!", "thanks!"]


async def test_a_whatsapp_conversation_opens_with_a_template(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, fake), g.client() as c:
        refused = await c.post("/v1/agents/support/twilio/messages", json={"to": WA_CALLER, "text": "hi"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "template_required"
        r = await c.post(
            "/v1/agents/support/twilio/messages",
            json={"to": WA_CALLER, "contentSid": TEMPLATE, "contentVariables": {"1": "Ada"}},
        )
        assert r.status_code == 202, r.text
        assert r.json()["sessionId"].startswith("wa-")
        await wait_for(lambda: len(fake.messages) == 1)
        sent = fake.messages[0]
        assert one(sent, "To") == WA_CALLER and one(sent, "From") == WA_NUMBER
        assert one(sent, "ContentSid") == TEMPLATE and json.loads(one(sent, "ContentVariables") or "") == {
            "1": "Ada"
        }
        assert one(sent, "Body") is None
        for bad in (
            {"to": "12"},
            {"to": CALLER},
            {"to": CALLER, "text": ""},
            {"to": CALLER, "contentSid": "nope"},
            {"to": CALLER, "text": "x", "contentSid": TEMPLATE},
            {"to": CALLER, "text": "x", "from": "+15550000000"},
            {"to": CALLER, "text": "x", "metadata": "x"},
        ):
            answer = await c.post("/v1/agents/support/twilio/messages", json=bad)
            assert answer.status_code == 400, (bad, answer.text)
        assert (
            await c.post("/v1/agents/nope/twilio/messages", json={"to": CALLER, "text": "x"})
        ).status_code == 404
        assert len(fake.messages) == 1


async def test_a_template_into_an_existing_whatsapp_session(sqlite_url: str) -> None:
    server = {"public_url": "https://gw.example.com"}
    async with twilio_gateway(sqlite_url, server=server) as (g, fake), g.client() as c:
        form = sms("SM" + "w" * 32, "hi", from_=WA_CALLER, to=WA_NUMBER, WaId=CALLER.lstrip("+"))
        assert (await post_in(g, form)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)  # the echo reply
        sid = (await g.runtime.store.sessions(SessionQuery()))[0].id
        bad = await c.post(f"/v1/sessions/{sid}/template", json={"contentSid": "HX1"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_template"
        r = await c.post(
            f"/v1/sessions/{sid}/template", json={"contentSid": TEMPLATE, "contentVariables": {"1": "x"}}
        )
        assert r.status_code == 202, r.text
        await wait_for(lambda: len(fake.messages) == 2)
        sent = fake.messages[1]
        assert (
            one(sent, "ContentSid") == TEMPLATE
            and one(sent, "To") == WA_CALLER
            and one(sent, "From") == WA_NUMBER
        )
        texts = [m.text for m in await g.runtime.store.messages(sid)]
        assert texts[-1] == f"[template: {TEMPLATE}]"
        # A chat session has no provider templates.
        chat = (await c.post("/v1/agents/support/messages", json={"text": "hello"})).json()["sessionId"]
        refused = await c.post(f"/v1/sessions/{chat}/template", json={"contentSid": TEMPLATE})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_whatsapp"
