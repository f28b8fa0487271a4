"""Coexistence echoes (issue 16, item 9): the business answers from the WhatsApp Business app.

Payloads are written from Meta's `smb_message_echoes` webhook reference:
`value.message_echoes[] = {from, to, id, timestamp, type, <type>: {...}}`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.store.sql import SessionQuery
from tests.conftest import Running, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.whatsapp.test_channel import (
    ENV,
    PNID,
    number,
    post,
    settings,
    text_webhook,
    wait_for,
    whatsapp_gateway,
)

USER = "16505551234"


def echo(wamid: str, body: str, *, to: str = "+" + USER, kind: str = "text", content: Any = None) -> bytes:
    item: dict[str, Any] = {
        "from": "15550783881",
        "to": to,
        "id": wamid,
        "timestamp": "1739321024",
        "type": kind,
        kind: content if content is not None else {"body": body},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        "message_echoes": [item],
    }
    change = {"value": value, "field": "smb_message_echoes"}
    return json.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    ).encode()


async def types(g: Running) -> list[str]:
    return [str(e.type) for e in await g.runtime.store.events_after(0)]


async def test_an_echo_is_a_human_message_and_pauses_the_ai_for_the_contact(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, graph):
        await post(g, text_webhook("wamid.C1", "do you deliver on Sundays?", sender=USER))
        await wait_for(lambda: len(graph.sent) == 1)
        body = echo("wamid.ECHO1", "Yes! Until 2pm. — Maria")
        assert (await post(g, body)).status_code == 200
        assert (await post(g, body)).status_code == 200  # a redelivery is stored once
        (session,) = await g.runtime.store.sessions(SessionQuery())
        messages = await g.runtime.store.messages(session.id)
        human = [m for m in messages if m.source == "human"]
        assert len(human) == 1
        assert human[0].role == "assistant" and human[0].author == "whatsapp_business_app"
        assert human[0].text == "Yes! Until 2pm. — Maria" and human[0].provider_message_id == "wamid.ECHO1"
        bot = [e for e in await g.runtime.store.events_after(0) if e.type == "bot.message"]
        assert bot[-1].data["source"] == "human" and bot[-1].data["echo"] is True
        paused = await g.runtime.store.session(session.id)
        assert paused is not None and paused.paused
        assert "session.paused" in await types(g)
        # The AI stays quiet for this contact now; the message is stored for the business.
        await post(g, text_webhook("wamid.C2", "great, see you then", sender=USER))
        await asyncio.sleep(0.5)
        assert len(graph.sent) == 1  # the echo itself is never sent again, nor an AI reply
        # The agent sees the business's words as its own earlier reply at the next turn.
        assert [m.text for m in await g.runtime.store.messages(session.id)][-1] == "great, see you then"


async def test_an_echo_to_a_new_contact_starts_their_session(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, graph):
        await post(g, echo("wamid.ECHO2", "Hi Ana, your order is ready", to="34600111222"))
        (session,) = await g.runtime.store.sessions(SessionQuery())
        assert session.contact is not None and session.contact.address == "34600111222"
        assert session.direction == "outbound" and session.paused
        assert graph.sent == []


async def test_echo_pauses_can_be_off_or_resume_by_themselves(db_url: str) -> None:
    async with FakeGraph(token="test-token") as graph:
        cfg = settings(db_url, graph, whatsapp=[number(graph, echo_resume_minutes=0.01)])
        async with run_gateway(cfg, env=ENV) as g:
            await post(g, echo("wamid.ECHO3", "I'll handle this one"))
            (session,) = await g.runtime.store.sessions(SessionQuery())
            assert session.paused
            async with asyncio.timeout(10):
                while (s := await g.runtime.store.session(session.id)) is not None and s.paused:
                    await asyncio.sleep(0.05)
            resumed = [e for e in await g.runtime.store.events_after(0) if e.type == "session.resumed"]
            assert resumed and resumed[-1].data["by"] == "echo_resume"
            await post(g, text_webhook("wamid.C3", "hello?", sender=USER))
            await wait_for(lambda: len(graph.sent) == 1)  # the AI answers again
        cfg = settings(db_url, graph, whatsapp=[number(graph, echo_pauses_ai=False)])
        async with run_gateway(cfg, env=ENV) as g:
            await post(g, echo("wamid.ECHO4", "just a note", to="34600999888"))
            rows = await g.runtime.store.sessions(SessionQuery(contact="34600999888"))
            assert rows and not rows[0].paused


async def test_a_business_revoke_echo_hides_its_message(db_url: str) -> None:
    async with whatsapp_gateway(db_url) as (g, _graph):
        await post(g, echo("wamid.ECHO5", "wrong price: 5 EUR"))
        revoke = echo("wamid.ECHO6", "", kind="revoke", content={"original_message_id": "wamid.ECHO5"})
        assert (await post(g, revoke)).status_code == 200
        gone = await g.runtime.store.find_message(channel="whatsapp", provider_message_id="wamid.ECHO5")
        assert gone is not None and gone.text == "" and gone.meta is not None
        assert gone.meta["revoked"]["by"] == "whatsapp_business_app"
