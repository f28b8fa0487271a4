"""Channel fidelity (issue 16): what Meta and Twilio send is kept, on SQLite and PostgreSQL.

Payloads are written here from the providers' reference pages (Meta's webhook
reference for messages/text, reaction, revoke, unsupported, status and errors;
Twilio's inbound WhatsApp webhook parameters), not copied from the fixtures.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from gateway.store.records import MessageRecord
from gateway.store.sql import SessionQuery
from tests.conftest import Running
from tests.fakes.openai_server import FakeOpenAI, text_reply
from tests.twilio.helpers import ACCOUNT_SID, CALLER, WA_NUMBER, signed_post, twilio_gateway
from tests.whatsapp.test_channel import PNID, post, sent_wamid, wait_for, whatsapp_gateway

USER = "16315551181"
WABA = "102290129340398"


def delivery(value: dict[str, Any], field: str = "messages") -> bytes:
    """Meta's envelope around one change (webhooks reference: `object`, `entry[].changes[]`)."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        **value,
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"value": value, "field": field}]}],
    }
    return json.dumps(doc).encode()


def inbound(message: dict[str, Any], *, profile: dict[str, Any] | None = None) -> bytes:
    contact = {"profile": profile or {"name": "Kerry Fisher"}, "wa_id": USER}
    base = {"from": USER, "timestamp": "1739321024"}
    return delivery({"contacts": [contact], "messages": [{**base, **message}]})


def text(wamid: str, body: str, **more: Any) -> bytes:
    return inbound({"id": wamid, "type": "text", "text": {"body": body}, **more})


async def user_events(g: Running) -> list[Any]:
    return [e for e in await g.runtime.store.events_after(0) if e.type == "user.message"]


async def stored(g: Running, wamid: str) -> MessageRecord:
    found = await g.runtime.store.find_message(channel="whatsapp", provider_message_id=wamid)
    assert found is not None
    return found


# ------------------------------------------------------------------ 1, 2: referral, forwarded

AD = {
    "source_url": "https://fb.me/3cr4Wqqkv",
    "source_id": "120226305854810726",
    "source_type": "ad",
    "body": "Summer sale: 20% off every order this week.",
    "headline": "Chat with us",
    "media_type": "image",
    "image_url": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.png",
    "ctwa_clid": "Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVwFjN80dp4_0N",
    "welcome_message": {"text": "Hi there! Let us know how we can help!"},
}
SHAPE = {
    "sourceUrl": "https://fb.me/3cr4Wqqkv",
    "sourceId": "120226305854810726",
    "sourceType": "ad",
    "body": "Summer sale: 20% off every order this week.",
    "headline": "Chat with us",
    "mediaType": "image",
    "mediaUrl": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.png",
    "ctwaClid": "Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVwFjN80dp4_0N",
    "welcomeMessage": "Hi there! Let us know how we can help!",
}


async def test_referral_and_forwarded_flags_reach_the_feed_and_the_store(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, _graph):
        assert (await post(g, text("wamid.AD1", "Is the sale still on?", referral=AD))).status_code == 200
        assert (await post(g, text("wamid.PLAIN", "and shipping?"))).status_code == 200
        fwd = text("wamid.FW1", "look at this", context={"forwarded": True})
        many = text("wamid.FW2", "chain letter", context={"frequently_forwarded": True})
        assert (await post(g, fwd)).status_code == 200 and (await post(g, many)).status_code == 200
        by_id = {e.data["providerMessageId"]: e.data for e in await user_events(g)}
        assert by_id["wamid.AD1"]["referral"] == SHAPE
        assert "referral" not in by_id["wamid.PLAIN"] and "forwarded" not in by_id["wamid.PLAIN"]
        assert by_id["wamid.FW1"]["forwarded"] is True and "frequentlyForwarded" not in by_id["wamid.FW1"]
        assert by_id["wamid.FW2"]["forwarded"] is True and by_id["wamid.FW2"]["frequentlyForwarded"] is True
        assert (await stored(g, "wamid.AD1")).meta["referral"] == SHAPE  # type: ignore[index]
        assert (await stored(g, "wamid.FW2")).meta["frequentlyForwarded"] is True  # type: ignore[index]
        assert "referral" not in ((await stored(g, "wamid.PLAIN")).meta or {})


async def test_twilio_whatsapp_referral_has_the_same_shape_and_only_when_there_is_one(db_url: str) -> None:
    async with twilio_gateway(db_url) as (g, _fake):

        def form(sid: str, body: str, **extra: str) -> dict[str, str]:
            # Twilio's inbound WhatsApp webhook: ReferralNumMedia is sent on every message.
            return {
                "SmsMessageSid": sid,
                "NumMedia": "0",
                "ProfileName": "Kerry",
                "MessageType": "text",
                "SmsSid": sid,
                "WaId": CALLER.lstrip("+"),
                "SmsStatus": "received",
                "Body": body,
                "To": WA_NUMBER,
                "ReferralNumMedia": "0",
                "NumSegments": "1",
                "MessageSid": sid,
                "AccountSid": ACCOUNT_SID,
                "From": "whatsapp:" + CALLER,
                "ApiVersion": "2010-04-01",
                **extra,
            }

        ad = {
            "ReferralSourceUrl": SHAPE["sourceUrl"],
            "ReferralSourceId": SHAPE["sourceId"],
            "ReferralSourceType": "ad",
            "ReferralBody": SHAPE["body"],
            "ReferralHeadline": SHAPE["headline"],
            "ReferralCtwaClid": SHAPE["ctwaClid"],
            "ReferralNumMedia": "1",
            "ReferralMediaUrl": SHAPE["mediaUrl"],
            "ReferralMediaContentType": "image/jpeg",
        }
        for params in (form("SM" + "a" * 32, "plain"), form("SM" + "b" * 32, "from the ad", **ad)):
            r = await signed_post(g, "/twilio/messaging", params)
            assert r.status_code == 200, r.text
        plain, from_ad = [e.data for e in await user_events(g)]
        assert "referral" not in plain
        expected = {k: v for k, v in SHAPE.items() if k != "welcomeMessage"}
        assert from_ad["referral"] == {**expected, "mediaContentType": "image/jpeg"}
        sessions = await g.runtime.store.sessions(SessionQuery())
        messages = await g.runtime.store.messages(sessions[0].id)
        kept = [m.meta.get("referral") for m in messages if m.role == "user" and m.meta]
        assert kept == [None, from_ad["referral"]]


# ------------------------------------------------------------------ 3, 4: revoke, unreaction


async def test_a_revoked_message_loses_its_text_and_the_agent_never_reads_it(db_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("noted"), text_reply("sure")])
        agent = {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}}
        async with whatsapp_gateway(db_url, **agent) as (g, graph):
            await post(g, text("wamid.SECRET", "my card number is 4111 1111 1111 1111"))
            await wait_for(lambda: len(graph.sent) == 1)
            revoke = inbound(
                {"id": "wamid.REVOKE1", "type": "revoke", "revoke": {"original_message_id": "wamid.SECRET"}}
            )
            assert (await post(g, revoke)).status_code == 200
            assert (await post(g, revoke)).status_code == 200  # a redelivery changes nothing
            gone = await stored(g, "wamid.SECRET")
            assert gone.text == "" and gone.parts == []
            assert gone.meta is not None and gone.meta["revoked"] == {
                "by": USER,
                "at": 1739321024,
                "wamid": "wamid.REVOKE1",
            }
            revoked = [e for e in await g.runtime.store.events_after(0) if e.type == "message.revoked"]
            assert revoked and revoked[0].data["messageId"] == gone.id
            texts = [e.data["text"] for e in await user_events(g)]
            assert "[message deleted]" not in texts
            await post(g, text("wamid.NEXT", "what did I say?"))
            await wait_for(lambda: len(graph.sent) == 2)
    said = json.dumps(llm.bodies[1]["messages"])
    assert "4111" not in said and "message deleted" not in said and "what did I say?" in said


async def test_a_removed_reaction_clears_the_reaction(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, graph):
        await post(g, text("wamid.Q1", "hi"))
        await wait_for(lambda: len(graph.sent) == 1)
        session = (await g.runtime.store.sessions(SessionQuery()))[0]
        reply = (await g.runtime.store.messages(session.id))[-1]
        ours = await sent_wamid(g, reply.id)
        react = {
            "id": "wamid.RX1",
            "type": "reaction",
            "reaction": {"message_id": ours, "emoji": "\U0001f44d"},
        }
        await post(g, inbound(react))
        reacted = next(m for m in await g.runtime.store.messages(session.id) if m.id == reply.id)
        assert reacted.meta and reacted.meta["reaction"]["emoji"] == "\U0001f44d"
        # Meta's reaction reference: a removal is the same object without `emoji`.
        await post(g, inbound({"id": "wamid.RX2", "type": "reaction", "reaction": {"message_id": ours}}))
        messages = await g.runtime.store.messages(session.id)
        cleared = next(m for m in messages if m.id == reply.id)
        assert "reaction" not in (cleared.meta or {})
        reaction_rows = [m for m in messages if m.type == "reaction"]
        assert len(reaction_rows) == 1 and reaction_rows[0].text == "" and reaction_rows[0].meta["hidden"]  # type: ignore[index]
        assert [e.data["text"] for e in await user_events(g)] == ["hi", "[reaction: \U0001f44d]"]
        removed = [e for e in await g.runtime.store.events_after(0) if e.type == "message.reaction"]
        assert removed and removed[0].data == {
            "messageId": reply.id,
            "providerMessageId": ours,
            "emoji": "",
            "removed": True,
            "from": USER,
        }
        await asyncio.sleep(0.2)
        assert len(graph.sent) == 1  # neither the reaction nor its removal runs a turn


# ------------------------------------------------------------------ 5: unknown types


async def test_unknown_types_keep_their_raw_object_bounded(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, _graph):
        poll = {
            "id": "wamid.U1",
            "type": "poll",
            "poll": {"question": "Lunch?", "options": ["pizza", "sushi"]},
        }
        huge = {"id": "wamid.U2", "type": "hologram", "hologram": {"blob": "x" * 40_000}}
        unsupported = {
            "id": "wamid.U3",
            "type": "unsupported",
            "unsupported": {"type": "poll_creation"},
            "errors": [
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ],
        }
        for m in (poll, huge, unsupported):
            assert (await post(g, inbound(m))).status_code == 200
        kept = (await stored(g, "wamid.U1")).meta
        assert kept is not None and kept["raw"] == {"from": USER, "timestamp": "1739321024", **poll}
        bounded = (await stored(g, "wamid.U2")).meta
        assert bounded is not None and bounded["raw"]["truncated"] is True
        assert len(bounded["raw"]["json"]) == 16_384 and bounded["raw"]["size"] > 40_000
        third = (await stored(g, "wamid.U3")).meta
        assert third is not None and third["raw"]["unsupported"] == {"type": "poll_creation"}
        assert third["errors"][0]["code"] == 131051


# ------------------------------------------------------------------ 6: webhook errors


async def test_account_and_message_errors_are_recorded_logged_and_counted(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, _graph):
        # Meta's messages reference: `value.errors` for system/app/account problems.
        account = delivery(
            {
                "errors": [
                    {
                        "code": 130429,
                        "title": "Rate limit hit",
                        "message": "Rate limit hit",
                        "error_data": {"details": "Cloud API message throughput has been reached."},
                        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                    }
                ]
            }
        )
        assert (await post(g, account)).status_code == 200
        message = inbound(
            {
                "id": "wamid.E1",
                "type": "unsupported",
                "unsupported": {"type": "edit"},
                "errors": [
                    {
                        "code": 131051,
                        "title": "Message type unknown",
                        "message": "Message type unknown",
                        "error_data": {"details": "Message type is currently not supported."},
                    }
                ],
            }
        )
        assert (await post(g, message)).status_code == 200
        recorded = [e for e in await g.runtime.store.events_after(0) if e.type == "webhook.error"]
        levels = {e.data["level"]: e for e in recorded}
        assert set(levels) == {"account", "message"}
        acc = levels["account"]
        assert acc.agent == "support" and acc.data["phoneNumberId"] == PNID and acc.data["wabaId"] == WABA
        assert acc.data["errors"][0]["code"] == 130429
        assert acc.data["errors"][0]["details"] == "Cloud API message throughput has been reached."
        assert levels["message"].data["providerMessageId"] == "wamid.E1"
        async with httpx.AsyncClient(base_url=g.url) as c:
            metrics = (await c.get("/metrics")).text
        assert (
            'gateway_webhook_errors_total{code="130429",level="account",provider="whatsapp"} 1.0' in metrics
        )
        assert (
            'gateway_webhook_errors_total{code="131051",level="message",provider="whatsapp"} 1.0' in metrics
        )


# ------------------------------------------------------------------ 7: username


async def test_a_username_user_keeps_the_username(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, _graph):
        body = delivery(
            {
                "contacts": [
                    {
                        "profile": {"name": "Pablo", "username": "@pablomorales"},
                        "user_id": "US.13491208655302741918",
                    }
                ],
                "messages": [
                    {
                        "from_user_id": "US.13491208655302741918",
                        "id": "wamid.UN1",
                        "timestamp": "1739321024",
                        "type": "text",
                        "text": {"body": "hola"},
                    }
                ],
            }
        )
        assert (await post(g, body)).status_code == 200
        event = (await user_events(g))[0].data
        assert event["contact"] == {
            "id": "US.13491208655302741918",
            "name": "Pablo",
            "username": "@pablomorales",
        }
        assert (await stored(g, "wamid.UN1")).meta["username"] == "@pablomorales"  # type: ignore[index]
