"""Twilio Messaging end to end: signed form webhooks in, a real gateway, a fake Twilio REST API out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from channels.twilio.accounts import TwilioAccounts
from channels.twilio.messaging import TwilioMessaging, parse_inbound
from channels.twilio.signature import sign
from gateway.delivery import SendFailed
from gateway.limits import whatsapp_window_open
from gateway.server import build_services
from gateway.store.records import OutboxItem
from gateway.store.sql import SessionQuery
from tests.conftest import Running, SseReader, run_gateway, session_record
from tests.fakes.openai_server import FakeOpenAI, text_reply
from tests.fakes.scripted_http import Reply
from tests.fakes.twilio_server import FakeTwilio
from tests.twilio.helpers import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CALLER,
    ENV,
    SMS_NUMBER,
    WA_NUMBER,
    numbers,
    signed_post,
    twilio_gateway,
    twilio_settings,
    wait_for,
)

PUBLIC = "https://gw.example.com"
INBOUND = "/twilio/messaging"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'
WA_CALLER = "whatsapp:" + CALLER


@asynccontextmanager
async def gateway(
    sqlite_url: str, *, server: Mapping[str, Any] | None = None, **agent: Any
) -> AsyncIterator[tuple[Running, FakeTwilio]]:
    """A gateway whose public address is PUBLIC, so replies carry status callbacks."""
    async with twilio_gateway(sqlite_url, server={"public_url": PUBLIC, **(server or {})}, **agent) as pair:
        yield pair


def sms(
    sid: str, body: str = "hello", *, from_: str = CALLER, to: str = SMS_NUMBER, **extra: str
) -> dict[str, str]:
    """The form of an inbound message webhook, as Twilio posts it."""
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": from_,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def wa(sid: str, body: str = "hello", **extra: str) -> dict[str, str]:
    return sms(
        sid, body, from_=WA_CALLER, to=WA_NUMBER, ProfileName="Ada L", WaId=CALLER.lstrip("+"), **extra
    )


async def post_in(g: Running, params: Mapping[str, str], **kw: Any) -> httpx.Response:
    return await signed_post(g, INBOUND, params, signed_url=PUBLIC + INBOUND, **kw)


async def post_status(
    g: Running, callback: str, sid: str, status: str, *, to: str = CALLER, **extra: str
) -> httpx.Response:
    """A status callback to the URL the gateway gave Twilio (signed over that full URL)."""
    assert callback.startswith(PUBLIC + "/twilio/messaging/status?k=")
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "To": to,
        "From": WA_NUMBER if to.startswith("whatsapp:") else SMS_NUMBER,
        "ApiVersion": "2010-04-01",
        **extra,
    }
    return await signed_post(g, callback.removeprefix(PUBLIC), params, signed_url=callback)


async def only_session(g: Running) -> Any:
    rows = await g.runtime.store.sessions(SessionQuery())
    assert len(rows) == 1, rows
    return rows[0]


async def sent_sid(g: Running, message_id: str, part: int = 0) -> str:
    """The Twilio sid of a reply's part, once the outbox recorded it."""
    async with asyncio.timeout(5):
        while True:
            parts = await g.runtime.store.outbox.outbox_for(message_id)
            if len(parts) > part and parts[part]["providerMessageId"]:
                return str(parts[part]["providerMessageId"])
            await asyncio.sleep(0.02)


async def feed(g: Running, **q: str) -> list[dict[str, Any]]:
    """The stored events, read through the SSE feed as a client reads them."""
    query = "&".join(f"{k}={v}" for k, v in q.items())
    async with g.client() as c, c.stream("GET", f"/v1/events?lastEventId=0&{query}") as r:
        reader, out = SseReader(r), []
        while (f := await reader.next_event())["event"] != "stream.caughtUp":
            out.append(f["json"])
        return out


def one(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


# ------------------------------------------------------------------------ inbound


async def test_sms_in_reply_out_once_with_a_status_callback(db_url: str) -> None:
    async with gateway(db_url) as (g, fake):
        r = await post_in(g, sms("SM" + "a" * 32, "Hi **there**, where is _my_ order?"))
        assert r.status_code == 200 and r.text == TWIML
        assert r.headers["content-type"].startswith("text/xml")
        await wait_for(lambda: len(fake.messages) == 1)
        sent = fake.messages[0]
        assert one(sent, "To") == CALLER and one(sent, "From") == SMS_NUMBER
        assert one(sent, "Body") == "Hi there, where is my order?"  # markdown emphasis stripped for SMS
        session = await only_session(g)
        assert session.id.startswith("sms-") and session.channel == "sms"
        assert session.contact.address == CALLER and session.endpoint == f"twilio:{SMS_NUMBER}"
        reply = (await g.runtime.store.messages(session.id))[-1]
        assert one(sent, "StatusCallback") == f"{PUBLIC}/twilio/messaging/status?k={reply.id}%3A0"
        assert await sent_sid(g, reply.id) == fake.message_sids[0]
        events = await feed(g, session=session.id)
        await asyncio.sleep(0.2)
        assert len(fake.messages) == 1
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["session.started", "user.message", "bot.message"]
    user = events[1]
    assert user["text"] == "Hi **there**, where is _my_ order?" and user["type"] == "text"
    assert user["providerMessageId"] == "SM" + "a" * 32 and user["numSegments"] == 1
    assert user["contact"] == {"id": CALLER, "name": None}
    assert events[2]["text"] == "Hi **there**, where is _my_ order?"
    assert [e["status"] for e in events if e["event"] == "message.status"] == ["sent"]


async def test_redelivery_is_a_duplicate_and_starts_no_turn(db_url: str) -> None:
    async with gateway(db_url) as (g, fake):
        form = sms("SM" + "d" * 32, "once")
        assert (await post_in(g, form)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        again = await asyncio.gather(*(post_in(g, form) for _ in range(3)))
        assert all(r.status_code == 200 and r.text == TWIML for r in again)
        await asyncio.sleep(0.4)
        assert len(fake.messages) == 1
        users = await g.runtime.store.events_after(0, types=["user.message"])
        assert len(users) == 1


async def test_mms_media_become_parts(sqlite_url: str) -> None:
    base = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{'b' * 32}/Media"
    async with gateway(sqlite_url) as (g, fake):
        form = sms(
            "MM" + "b" * 32,
            "look at these",
            NumMedia="2",
            MediaUrl0=f"{base}/ME1",
            MediaContentType0="image/jpeg",
            MediaUrl1=f"{base}/ME2",
            MediaContentType1="video/mp4",
        )
        assert (await post_in(g, form)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        session = await only_session(g)
        user = (await g.runtime.store.messages(session.id))[0]
        assert user.type == "image" and user.text == "look at these"
        assert user.parts == [
            {"kind": "image", "url": f"{base}/ME1", "mimeType": "image/jpeg"},
            {"kind": "video", "url": f"{base}/ME2", "mimeType": "video/mp4"},
        ]
        # Media without a caption: the agent still reads what arrived.
        bare = sms("MM" + "c" * 32, "", NumMedia="1", MediaUrl0=f"{base}/ME3", MediaContentType0="audio/amr")
        assert (await post_in(g, bare)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 2)
        assert one(fake.messages[1], "Body") == "[audio]"
        event = (await g.runtime.store.events_after(0, types=["user.message"]))[-1]
        assert event.data["media"] == [{"kind": "audio", "url": f"{base}/ME3", "mimeType": "audio/amr"}]


async def test_whatsapp_via_twilio_text_button_and_location(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        assert (await post_in(g, wa("SM" + "1" * 32, "Hi **bold** friend"))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        sent = fake.messages[0]
        assert one(sent, "To") == WA_CALLER and one(sent, "From") == WA_NUMBER
        assert one(sent, "Body") == "Hi *bold* friend"  # WhatsApp formatting
        session = await only_session(g)
        assert session.id.startswith("wa-") and session.channel == "whatsapp"
        assert session.contact.address == CALLER.lstrip("+") and session.contact.name == "Ada L"
        assert session.endpoint == f"twilio:{WA_NUMBER}"

        button = wa("SM" + "2" * 32, "Yes please", ButtonText="Yes please", ButtonPayload="confirm-42")
        assert (await post_in(g, button)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 2)
        assert one(fake.messages[1], "Body") == "Yes please"

        where = wa(
            "SM" + "3" * 32,
            "",
            Latitude="52.3676",
            Longitude="4.9041",
            Address="Dam 1, Amsterdam",
            Label="Office",
            MessageType="location",
        )
        assert (await post_in(g, where)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 3)
        assert one(fake.messages[2], "Body") == "[location: 52.3676,4.9041 Office, Dam 1, Amsterdam]"
        users = [m for m in await g.runtime.store.messages(session.id) if m.role == "user"]
        assert [m.type for m in users] == ["text", "interactive", "location"]
        assert users[1].parts == [{"kind": "button", "text": "Yes please", "payload": "confirm-42"}]
        assert users[2].parts == [
            {
                "kind": "location",
                "latitude": 52.3676,
                "longitude": 4.9041,
                "name": "Office",
                "address": "Dam 1, Amsterdam",
            }
        ]
        events = await g.runtime.store.events_after(0, types=["user.message"])
        assert events[0].data["contact"] == {"id": CALLER.lstrip("+"), "name": "Ada L"}
        assert events[0].channel == "whatsapp"
        assert len(await g.runtime.store.sessions(SessionQuery())) == 1


async def test_dev_routes_send_a_tester_to_the_dev_agent(sqlite_url: str) -> None:
    tester = "+34600123456"
    async with gateway(sqlite_url, dev_routes={tester: "dev-berna-support"}) as (g, fake):
        assert (await post_in(g, sms("SM" + "e" * 32, "from dev", from_=tester))).status_code == 200
        assert (await post_in(g, sms("SM" + "f" * 32, "from customer"))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 2)
        rows = await g.runtime.store.sessions(SessionQuery())
        assert {s.contact.address: s.agent_id for s in rows} == {
            tester: "dev-berna-support",
            CALLER: "support",
        }
        dev = next(m for m in fake.messages if one(m, "To") == tester)
        assert one(dev, "From") == SMS_NUMBER  # the dev agent answers from the number written to


# ---------------------------------------------------------------------- signatures


async def test_bad_signatures_are_refused_and_nothing_is_stored(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        before = await g.runtime.store.last_seq()
        form = sms("SM" + "5" * 32, "sneaky")
        assert (await post_in(g, form, token="not-the-token")).status_code == 401
        assert (await post_in(g, form, token=None)).status_code == 401
        assert (await signed_post(g, INBOUND, form, signed_url=PUBLIC + "/elsewhere")).status_code == 401
        # Signed over the local address, but Twilio called the public one (server.public_url).
        assert (await signed_post(g, INBOUND, form)).status_code == 401
        tampered = {**form, "Body": "changed after signing"}
        r = await signed_post(
            g,
            INBOUND,
            tampered,
            headers={"x-twilio-signature": sign(AUTH_TOKEN, PUBLIC + INBOUND, form)},
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"
        status = {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID}
        assert (await signed_post(g, "/twilio/messaging/status?k=x", status, token="nope")).status_code == 401
        assert await g.runtime.store.sessions(SessionQuery()) == []
        assert await g.runtime.store.last_seq() == before
        # The public URL with the default port is the same URL (Twilio signs either way).
        r = await signed_post(g, INBOUND, form, signed_url="https://gw.example.com:443" + INBOUND)
        assert r.status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)


async def test_signature_without_public_url_is_over_the_requested_url(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, fake):
        assert (await signed_post(g, INBOUND, sms("SM" + "6" * 32))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        # No public URL: no status callback is requested (statuses could not be reached).
        assert "StatusCallback" not in fake.messages[0]


async def test_signature_behind_a_trusted_proxy(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url, server={"trust_proxy": True}) as (g, fake):
        proxy = {"x-forwarded-proto": "https", "x-forwarded-host": "sms.example.org"}
        form = sms("SM" + "7" * 32)
        r = await signed_post(g, INBOUND, form, signed_url="https://sms.example.org" + INBOUND, headers=proxy)
        assert r.status_code == 200
        wrong = await signed_post(g, INBOUND, sms("SM" + "8" * 32), headers=proxy)  # signed over local URL
        assert wrong.status_code == 401
        await wait_for(lambda: len(fake.messages) == 1)


async def test_another_accounts_token_cannot_speak_for_a_number(sqlite_url: str) -> None:
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        other = "+15550102009"
        twilio = [
            *numbers(fake),
            {
                "number": other,
                "api_base_url": fake.base_url,
                "account_sid_env": "TW2_SID",
                "auth_token_env": "TW2_TOKEN",
            },
        ]
        settings = twilio_settings(sqlite_url, fake, twilio=twilio)
        env = {**ENV, "TW2_SID": "AC" + "2" * 32, "TW2_TOKEN": "second-token"}
        async with run_gateway(settings, env=env) as g:
            # Account 1 signs a message "to" account 2's number.
            r = await signed_post(g, INBOUND, sms("SM" + "9" * 32, to=other))
            assert r.status_code == 401
            own = sms("SM" + "0" * 32, to=other, AccountSid="AC" + "2" * 32)
            assert (await signed_post(g, INBOUND, own, token="second-token")).status_code == 200
            assert len(await g.runtime.store.sessions(SessionQuery())) == 1
            # Nor can it report statuses of the other account's messages.
            receipt = {"MessageSid": "SM1", "MessageStatus": "failed", "From": other, "To": CALLER}
            path = "/twilio/messaging/status?k=msg_1%3A0"
            assert (await signed_post(g, path, {**receipt, "AccountSid": ACCOUNT_SID})).status_code == 401
            r = await signed_post(g, path, {**receipt, "AccountSid": "AC" + "2" * 32}, token="second-token")
            assert r.status_code == 200
            # Nor call it.
            call = {"CallSid": "CA" + "9" * 32, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": other}
            assert (await signed_post(g, "/twilio/voice", call)).status_code == 401
            call["AccountSid"] = "AC" + "2" * 32
            r = await signed_post(g, "/twilio/voice", call, token="second-token")
            assert r.status_code == 200 and "<ConversationRelay" in r.text


# --------------------------------------------------------------- malformed requests


async def test_unroutable_and_malformed_requests_get_clear_answers(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        r = await post_in(g, sms("SM" + "4" * 32, to="+15550109999"))
        assert r.status_code == 200 and r.text == TWIML
        recorded = await g.runtime.store.events_after(0, types=["webhook.unroutable"])
        assert len(recorded) == 1 and recorded[0].agent == "_unroutable"
        assert recorded[0].data["to"] == "+15550109999" and recorded[0].data["from"] == CALLER
        assert recorded[0].data["providerMessageId"] == "SM" + "4" * 32

        missing = {k: v for k, v in sms("SM" + "4" * 32).items() if k != "MessageSid"}
        r = await post_in(g, missing)
        assert r.status_code == 400 and "MessageSid" in r.json()["error"]["message"]
        assert (await post_in(g, {k: v for k, v in sms("SMx").items() if k != "From"})).status_code == 400

        async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
            r = await c.post(INBOUND, json=sms("SM1"), headers={"x-twilio-signature": "x"})
            assert r.status_code == 415
            big = {"content-type": "application/x-www-form-urlencoded"}
            r = await c.post(INBOUND, content=b"Body=" + b"x" * 70_000, headers=big)
            assert r.status_code == 413
            assert (await c.post(INBOUND, content=b"\xff\xfe=1", headers=big)).status_code == 400
            assert (await c.get(INBOUND)).status_code == 405
        # Odd values never crash the parser: a bogus NumMedia and coordinates are ignored.
        odd = sms("SM" + "3" * 32, "odd", NumMedia="999999999999", Latitude="nan", Longitude="x")
        assert (await post_in(g, odd)).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        assert await g.runtime.store.events_after(0, types=["user.message"])
        assert one(fake.messages[0], "Body") == "odd"


# ------------------------------------------------------------------------- replies


async def test_a_long_reply_is_split_in_order_under_1600_characters(sqlite_url: str) -> None:
    sentence = "This sentence is part of a long answer that goes on. "
    text = (sentence * 66).strip()  # ~3500 characters
    assert len(text) > 3400
    async with gateway(sqlite_url) as (g, fake):
        assert (await post_in(g, sms("SM" + "l" * 32, text))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 3)
        await asyncio.sleep(0.2)
        bodies = fake.bodies()
        assert len(bodies) == 3 and all(0 < len(b) <= 1600 for b in bodies)
        assert " ".join(bodies) == text  # cut at sentence ends, in order, nothing lost
        assert all(b.endswith(".") for b in bodies)
        session = await only_session(g)
        reply = (await g.runtime.store.messages(session.id))[-1]
        callbacks = [one(m, "StatusCallback") for m in fake.messages]
        assert callbacks == [f"{PUBLIC}/twilio/messaging/status?k={reply.id}%3A{i}" for i in range(3)]


async def test_markdown_images_go_as_media(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        text = "Here is the map ![map](https://img.example.com/map.png) and **more**"
        assert (await post_in(g, sms("SM" + "m" * 32, text))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        sent = fake.messages[0]
        assert one(sent, "Body") == "Here is the map and more"
        assert sent["MediaUrl"] == ["https://img.example.com/map.png"]


async def test_llm_reply_with_images_and_long_text(sqlite_url: str) -> None:
    long = "\n\n".join(f"Paragraph {i}. " + "word " * 120 for i in range(4))
    answer = "![a](https://img.example.com/a.png)\n\n" + long + "\n\n![b](https://img.example.com/b.png)"
    async with FakeOpenAI() as llm:
        llm.script([text_reply(answer)])
        agent = {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}}
        async with gateway(sqlite_url, **agent) as (g, fake):
            assert (await post_in(g, sms("SM" + "o" * 32, "show me"))).status_code == 200
            await wait_for(lambda: len(fake.messages) >= 2)
            await asyncio.sleep(0.3)
            bodies = fake.bodies()
            assert len(bodies) == 2 and all(len(b) <= 1600 for b in bodies)
            assert bodies[0].startswith("Paragraph 0.") and bodies[1].startswith("Paragraph 2.")
            assert fake.messages[0]["MediaUrl"] == [
                "https://img.example.com/a.png",
                "https://img.example.com/b.png",
            ]
            assert "MediaUrl" not in fake.messages[1]


# ------------------------------------------------------------------- send failures


async def test_rate_limits_and_5xx_are_retried_and_sent_once(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        fake.fail_next(1, 429, 20429, "Too Many Requests", on="Messages", headers={"retry-after": "0"})
        fake.fail_next(2, 500, None, "Internal error", on="Messages")
        assert (await post_in(g, sms("SM" + "r" * 32, "retry me"))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        await asyncio.sleep(0.3)
        assert fake.bodies() == ["retry me"]
        tries = [r for r in fake.requests if r.path.endswith("/Messages.json")]
        assert len(tries) == 4
        session = await only_session(g)
        reply = (await g.runtime.store.messages(session.id))[-1]
        parts = await g.runtime.store.outbox.outbox_for(reply.id)
        assert parts[0]["status"] == "sent" and parts[0]["attempts"] == 4


async def test_an_invalid_number_fails_the_part_without_retry(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        fake.fail_next(1, 400, 21211, "The 'To' number +1555 is not a valid phone number.", on="Messages")
        assert (await post_in(g, sms("SM" + "i" * 32, "hello"))).status_code == 200
        session = await only_session(g)

        async def failed() -> list[Any]:
            return await g.runtime.store.events_after(0, types=["message.status"])

        async with asyncio.timeout(5):
            while not await failed():
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        (event,) = await failed()
        assert event.data["status"] == "failed" and event.data["error"]["code"] == "21211"
        assert "not a valid phone number" in event.data["error"]["message"]
        assert fake.messages == []
        assert len([r for r in fake.requests if r.path.endswith("/Messages.json")]) == 1
        reply = (await g.runtime.store.messages(session.id))[-1]
        assert reply.status == "failed" and reply.error and reply.error["code"] == "21211"


def _item(endpoint: str, payload: dict[str, Any]) -> OutboxItem:
    return OutboxItem(
        id="out_1",
        idempotency_key="msg_1:0",
        channel="sms",
        agent_id="support",
        session_id="sms-1",
        message_id="msg_1",
        part=0,
        parts=1,
        payload=payload,
        attempts=1,
        endpoint=endpoint,
    )


@pytest.mark.parametrize(
    ("failure", "maybe_sent", "retryable", "code"),
    [
        (httpx.ReadTimeout("slow"), True, True, "network"),
        (httpx.ConnectError("refused"), False, True, "network"),
        (httpx.ConnectTimeout("no route"), False, True, "network"),
    ],
)
async def test_transport_failures_map_to_send_failed(
    sqlite_url: str, failure: Exception, maybe_sent: bool, retryable: bool, code: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    settings = twilio_settings(sqlite_url, FakeTwilio(), server={"public_url": PUBLIC})
    rt = build_services(settings, ENV)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        messaging = TwilioMessaging(
            TwilioAccounts(ENV, http, directory=rt.directory),
            service=rt.service,
            settings=settings,
            store=rt.store,
        )
        payload = {"to": CALLER, "from": SMS_NUMBER, "body": "hi", "mediaUrls": []}
        with pytest.raises(SendFailed) as caught:
            await messaging.send(_item(f"twilio:{SMS_NUMBER}", payload))
    assert caught.value.maybe_sent is maybe_sent and caught.value.retryable is retryable
    assert caught.value.code == code
    await rt.store.close()


async def test_rest_errors_map_to_send_failed(sqlite_url: str) -> None:
    replies = [
        httpx.Response(400, json={"code": 63016, "message": "outside the window", "status": 400}),
        httpx.Response(429, json={"code": 20429, "message": "slow down"}, headers={"retry-after": "3"}),
        httpx.Response(503, text="<html>bad gateway</html>"),
        httpx.Response(201, json={"status": "queued"}),  # accepted, but no sid
    ]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return replies[len(sent) - 1]

    settings = twilio_settings(sqlite_url, FakeTwilio())
    rt = build_services(settings, ENV)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        messaging = TwilioMessaging(
            TwilioAccounts(ENV, http, directory=rt.directory),
            service=rt.service,
            settings=settings,
            store=rt.store,
        )
        item = _item(
            f"twilio:{WA_NUMBER}", {"to": WA_CALLER, "from": WA_NUMBER, "body": "x", "mediaUrls": []}
        )
        errors = []
        for _ in replies:
            with pytest.raises(SendFailed) as caught:
                await messaging.send(item)
            errors.append(caught.value)
        with pytest.raises(SendFailed) as unknown:
            await messaging.send(_item("twilio:+15550000000", item.payload))
    window, limited, down, no_sid = errors
    assert window.code == "63016" and window.closes_window and not window.retryable
    assert limited.code == "20429" and limited.retryable and limited.retry_after == 3.0
    assert down.code == "503" and down.retryable and not down.maybe_sent
    assert no_sid.maybe_sent and not no_sid.retryable
    assert unknown.value.code == "unknown_number" and len(sent) == 4
    assert "StatusCallback" not in sent[0].content.decode()  # no public_url configured
    await rt.store.close()


# ------------------------------------------------------------------------ statuses


async def test_statuses_only_move_forward(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        assert (await post_in(g, sms("SM" + "s" * 32, "status please"))).status_code == 200
        await wait_for(lambda: len(fake.messages) == 1)
        callback = one(fake.messages[0], "StatusCallback")
        assert callback
        session = await only_session(g)
        reply = (await g.runtime.store.messages(session.id))[-1]
        sid = await sent_sid(g, reply.id)
        for status in ("queued", "sending", "sent", "delivered", "read", "sent", "delivered", "accepted"):
            r = await post_status(g, callback, sid, status)
            assert r.status_code == 200, r.text
        record = (await g.runtime.store.messages(session.id))[-1]
        assert record.status == "read" and record.provider_message_id == sid
        # An unknown message (and key): acknowledged, nothing changes.
        unknown = f"{PUBLIC}/twilio/messaging/status?k=msg_unknown%3A0"
        assert (
            await post_status(g, unknown, "SM" + "9" * 32, "failed", ErrorCode="30003")
        ).status_code == 200
        bare = f"{PUBLIC}/twilio/messaging/status"
        assert (await post_status(g, bare + "?k=", "SM" + "9" * 32, "delivered")).status_code == 200
        # A real key with another message's sid: the key does not speak for that message.
        assert (
            await post_status(g, callback, "SM" + "8" * 32, "failed", ErrorCode="30003")
        ).status_code == 200
        assert (await g.runtime.store.messages(session.id))[-1].status == "read"
        events = await feed(g, session=session.id)
    assert [e["status"] for e in events if e["event"] == "message.status"] == ["sent", "delivered", "read"]


async def test_undelivered_is_final_and_keeps_the_error(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        await post_in(g, sms("SM" + "u" * 32, "are you there"))
        await wait_for(lambda: len(fake.messages) == 1)
        callback = one(fake.messages[0], "StatusCallback")
        assert callback
        session = await only_session(g)
        reply = (await g.runtime.store.messages(session.id))[-1]
        sid = await sent_sid(g, reply.id)
        await post_status(g, callback, sid, "undelivered", ErrorCode="30003")
        for late in ("delivered", "read", "sent"):
            await post_status(g, callback, sid, late)
        record = (await g.runtime.store.messages(session.id))[-1]
        assert record.status == "failed"
        assert record.error == {
            "code": 30003,
            "status": "undelivered",
            "message": "Unreachable destination handset",
        }
        statuses = await g.runtime.store.events_after(0, types=["message.status"])
        assert [e.data["status"] for e in statuses] == ["sent", "failed"]
        assert statuses[-1].data["error"]["code"] == 30003


async def test_a_receipt_that_overtakes_the_send_response_settles_the_part(sqlite_url: str) -> None:
    async with gateway(sqlite_url) as (g, fake):
        fake.stall_next(1.0)  # Twilio accepted the message but its answer is slow
        await post_in(g, sms("SM" + "t" * 32, "quick"))
        await wait_for(lambda: len(fake.messages) == 1)
        callback = one(fake.messages[0], "StatusCallback")
        assert callback
        session = await only_session(g)
        reply = (await g.runtime.store.messages(session.id))[-1]
        # The receipt finds the part by the key in its callback URL while the send is in flight.
        assert (await post_status(g, callback, fake.message_sids[0], "delivered")).status_code == 200
        parts = await g.runtime.store.outbox.outbox_for(reply.id)
        assert parts[0]["delivery"] == "delivered" and parts[0]["providerMessageId"] == fake.message_sids[0]
        await sent_sid(g, reply.id)
        await asyncio.sleep(1.2)
        parts = await g.runtime.store.outbox.outbox_for(reply.id)
        assert parts[0]["status"] == "sent" and parts[0]["delivery"] == "delivered"
        statuses = await g.runtime.store.events_after(0, types=["message.status"])
        assert [e.data["status"] for e in statuses] == ["delivered"]
        assert len(fake.messages) == 1


async def test_63016_closes_the_whatsapp_window(sqlite_url: str) -> None:
    async with gateway(sqlite_url, echo_delay_ms=400) as (g, fake):
        await post_in(g, wa("SM" + "w" * 32, "first"))
        await wait_for(lambda: len(fake.messages) == 1)
        callback = one(fake.messages[0], "StatusCallback")
        assert callback
        session = await only_session(g)
        first_reply = (await g.runtime.store.messages(session.id))[-1]
        sid = await sent_sid(g, first_reply.id)
        # The user writes again; while the agent thinks, Twilio reports the first reply failed 63016.
        await post_in(g, wa("SM" + "x" * 32, "second"))
        r = await post_status(g, callback, sid, "failed", to=WA_CALLER, ErrorCode="63016")
        assert r.status_code == 200
        closed = await g.runtime.store.session(session.id)
        assert closed is not None and closed.window_closed_at is not None

        async def window_error() -> list[Any]:
            return await g.runtime.store.events_after(0, types=["session.error"])

        async with asyncio.timeout(5):
            while not await window_error():
                await asyncio.sleep(0.05)
        (error,) = await window_error()
        assert error.data["code"] == "window_closed"
        await asyncio.sleep(0.2)
        assert len(fake.messages) == 1  # the second reply was stored, not sent
        failed = next(m for m in await g.runtime.store.messages(session.id) if m.id == first_reply.id)
        assert failed.status == "failed" and failed.error and failed.error["code"] == 63016
        # An operator cannot send free-form text either; the user writing again reopens it.
        async with g.client() as c:
            r = await c.post(f"/v1/sessions/{session.id}/messages", json={"text": "hello?"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "window_closed"
        await post_in(g, wa("SM" + "y" * 32, "third"))
        await wait_for(lambda: len(fake.messages) == 2)
        assert one(fake.messages[1], "Body") == "third"


async def test_window_rules() -> None:
    """SMS has no window; WhatsApp via Twilio follows the Cloud API's rule (tested there)."""
    day = 24 * 3600 * 1000
    sms_session = session_record(channel="sms")
    wa_session = session_record(channel="whatsapp", last_inbound_at=1_000)
    open_ = TwilioMessaging.window_open
    assert open_(None, sms_session, 10 * day)  # type: ignore[arg-type]
    for now in (1_000 + day - 1, 1_000 + day):
        assert open_(None, wa_session, now) == whatsapp_window_open(wa_session, now)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ sessions


async def test_idle_timeout_ends_sms_sessions_and_a_returning_contact_gets_history(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("first answer"), text_reply("welcome back")])
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "limits": {"idle_timeout_seconds": 1},
        }
        async with gateway(sqlite_url, **agent) as (g, fake):
            await post_in(g, sms("SM" + "h" * 32, "my name is Ada"))
            await wait_for(lambda: len(fake.messages) == 1)
            first = await only_session(g)
            async with asyncio.timeout(5):
                while (await g.runtime.store.session(first.id)).status != "ended":  # type: ignore[union-attr]
                    await asyncio.sleep(0.1)
            ended = await g.runtime.store.session(first.id)
            assert ended is not None and ended.end_reason == "idle_timeout"
            await post_in(g, sms("SM" + "k" * 32, "hello again"))
            await wait_for(lambda: len(fake.messages) == 2)
            rows = await g.runtime.store.sessions(SessionQuery())
            assert len(rows) == 2 and all(r.id.startswith("sms-") for r in rows)
            assert fake.bodies() == ["first answer", "welcome back"]
            ended_events = await g.runtime.store.events_after(0, types=["session.ended"])
            assert ended_events[0].data["reason"] == "idle_timeout"
    history = [(m["role"], m["content"]) for m in llm.bodies[1]["messages"] if m["role"] != "system"]
    assert history == [("user", "my name is Ada"), ("assistant", "first answer"), ("user", "hello again")]


# -------------------------------------------------------------------------- parser


def test_parse_inbound_reads_referrals_and_replies() -> None:
    msg = parse_inbound(
        {
            "MessageSid": "SM1",
            "From": WA_CALLER,
            "To": WA_NUMBER,
            "Body": "Hi from the ad",
            "WaId": "15557654321",
            "ReferralSourceUrl": "https://fb.me/ad",
            "ReferralCtwaClid": "clid-1",
            "ReferralHeadline": "",
            "OriginalRepliedMessageSid": "SM0",
            "Forwarded": "true",
            "NumSegments": "1",
        }
    )
    assert msg.channel == "whatsapp" and msg.sender == "15557654321"
    extra = msg.extra()
    assert extra["referral"] == {"sourceUrl": "https://fb.me/ad", "ctwaClid": "clid-1"}
    assert extra["replyTo"] == "SM0" and extra["forwarded"] is True
    assert msg.meta() == {
        "provider": "twilio",
        "replyTo": "SM0",
        "numSegments": 1,
        "forwarded": True,
        "referral": {"sourceUrl": "https://fb.me/ad", "ctwaClid": "clid-1"},
    }
    no_waid = parse_inbound({"MessageSid": "SM2", "From": WA_CALLER, "To": WA_NUMBER})
    assert no_waid.sender == "15557654321" and no_waid.content() == ("unsupported", "[empty message]", [])


@pytest.mark.parametrize("paused", [False, True])
async def test_whatsapp_voice_notes_via_twilio_are_transcribed(sqlite_url: str, paused: bool) -> None:
    async with FakeOpenAI() as stt:
        heard: list[Any] = []

        def transcribe(request: Any) -> Reply:
            heard.append(request)
            return Reply(
                headers={"content-type": "application/json"}, pieces=[b'{"text": "where is my parcel"}']
            )

        stt.route("/v1/audio/transcriptions", transcribe)
        agent = {"transcriber": {"base_url": stt.url, "model": "whisper-1"}}
        async with gateway(sqlite_url, **agent) as (g, fake):
            # Twilio's media URL redirects to storage; the download carries the account's basic auth.
            media = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{'m' * 32}/Media/ME1"
            fake.route(media, lambda r: Reply(status=307, headers={"location": f"{fake.base_url}/blob/ME1"}))
            fake.route(
                "/blob/ME1", lambda r: Reply(headers={"content-type": "audio/ogg"}, pieces=[b"OggS-voice"])
            )
            form = sms(
                "SM" + "v" * 32,
                "",
                from_=WA_CALLER,
                to=WA_NUMBER,
                NumMedia="1",
                MediaUrl0=f"{fake.base_url}{media}",
                MediaContentType0="audio/ogg",
                WaId=CALLER.lstrip("+"),
            )
            if paused:  # a human has the conversation: no reply, but the operator can read it
                async with g.client() as c:
                    assert (await c.post("/v1/agents/support/pause")).status_code == 200
            assert (await post_in(g, form)).status_code == 200
            session = await only_session(g)
            if paused:
                async with asyncio.timeout(10):
                    while (await g.runtime.store.messages(session.id))[0].text == "[audio]":
                        await asyncio.sleep(0.05)
                assert fake.messages == []
            else:
                await wait_for(lambda: len(fake.messages) == 1)
                assert one(fake.messages[0], "Body") == "[audio] where is my parcel"
            user = (await g.runtime.store.messages(session.id))[0]
            assert user.text == "[audio] where is my parcel" and user.meta and user.meta["transcribed"]
            fetch = next(r for r in fake.requests if r.path == media)
            assert fetch.headers["authorization"].startswith("Basic ")
    assert b"OggS-voice" in heard[0].body
