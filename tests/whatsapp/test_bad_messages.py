"""One bad message never blocks a WhatsApp delivery (issue 11, item 4).

A NUL is dropped, a lone surrogate becomes U+FFFD and a name over 256 characters is
cut: the message is stored. A message whose id (or sender) does not fit the store
is recorded as a `webhook.rejected` event instead. Either way the good messages of
the delivery are stored, the delivery answers 200, and a redelivery stays 200
without storing anything twice.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.store.sql import SessionQuery
from tests.whatsapp.test_channel import PNID, post, wait_for, whatsapp_gateway

GOOD = "wamid.GOOD0001"
LONG_ID = "wamid." + "x" * 200


def delivery(*messages: tuple[str, str, str, str]) -> bytes:
    """A webhook with one (wamid, sender, name, text) per message, each with its contact."""
    contacts = [{"wa_id": sender, "profile": {"name": name}} for _, sender, name, _ in messages]
    items = [
        {"from": sender, "id": wamid, "timestamp": "1749416400", "type": "text", "text": {"body": text}}
        for wamid, sender, _, text in messages
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PNID},
        "contacts": contacts,
        "messages": items,
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    # json.dumps escapes NUL and lone surrogates as \u0000 / \ud800, as a hostile sender would.
    return json.dumps(doc).encode()


async def _user_messages(g: Any) -> list[tuple[str, str | None, str, str | None]]:
    """(text, contact name, contact address, provider id) of every stored user message."""
    out = []
    for s in await g.runtime.store.sessions(SessionQuery(limit=50)):
        for m in await g.runtime.store.messages(s.id):
            if m.role == "user":
                contact = s.contact
                out.append(
                    (
                        m.text,
                        contact.name if contact else None,
                        contact.address if contact else "",
                        m.provider_message_id,
                    )
                )
    return sorted(out, key=lambda row: row[2])


async def _rejected(g: Any) -> list[dict[str, Any]]:
    events = await g.runtime.store.events_after(0, types=["webhook.rejected"])
    return [dict(e.data) for e in events]


async def test_a_bad_message_is_recorded_and_its_neighbour_stored(db_url: str) -> None:
    body = delivery(
        (GOOD, "16505550001", "Ada", "hello"),
        (LONG_ID, "16505550002", "N" * 300, "bad\u0000 one"),
    )
    async with whatsapp_gateway(db_url) as (g, graph):
        first = await post(g, body)
        assert first.status_code == 200, first.text
        assert await _user_messages(g) == [("hello", "Ada", "16505550001", GOOD)]
        rejected = await _rejected(g)
        assert len(rejected) == 1
        assert rejected[0]["reason"].startswith("`id` is longer than 128")
        assert rejected[0]["from"] == "16505550002" and rejected[0]["text"] == "bad one"
        assert len(rejected[0]["providerMessageId"]) <= 128
        # Meta redelivers: still 200, nothing stored twice, one reply only.
        again = await post(g, body)
        assert again.status_code == 200, again.text
        assert await _user_messages(g) == [("hello", "Ada", "16505550001", GOOD)]
        await wait_for(lambda: len(graph.sent) == 1)
        assert graph.sent[0]["text"]["body"] == "hello"
        async with g.client() as c:
            assert (await c.get("/v1/sessions")).status_code == 200


async def test_unsafe_text_and_names_are_made_safe_and_stored(db_url: str) -> None:
    body = delivery(
        ("wamid.NUL0001", "16505550003", "Nu\u0000ll", "a\u0000b"),
        ("wamid.SUR0001", "16505550004", "Sur\ud800", "x\udfffy"),
        ("wamid.LONGNAME1", "16505550005", "L" * 300, "long name"),
    )
    async with whatsapp_gateway(db_url) as (g, graph):
        r = await post(g, body)
        assert r.status_code == 200, r.text
        rows = await _user_messages(g)
        assert rows == [
            ("ab", "Null", "16505550003", "wamid.NUL0001"),
            ("x\ufffdy", "Sur\ufffd", "16505550004", "wamid.SUR0001"),
            ("long name", "L" * 255 + "…", "16505550005", "wamid.LONGNAME1"),
        ]
        assert await _rejected(g) == []
        await wait_for(lambda: len(graph.sent) == 3)
        async with g.client() as c:
            listed = await c.get("/v1/sessions")
            assert listed.status_code == 200 and len(listed.json()["sessions"]) == 3
            for s in listed.json()["sessions"]:
                assert (await c.get(f"/v1/sessions/{s['sessionId']}")).status_code == 200
