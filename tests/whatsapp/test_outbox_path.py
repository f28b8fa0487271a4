"""WhatsApp replies on the outbox's hot path, through a real gateway and the fake Graph API.

The poll is set to an hour, so anything that reaches the fake Graph went out through the
hand-off from the reply's commit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import make_settings, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.whatsapp.test_channel import ENV, number, post, text_webhook, wait_for


def _config(db_url: str, graph: FakeGraph) -> Any:
    return make_settings(
        db_url,
        agents={"support": {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)]}},
        server={"outbox_poll_seconds": 3600, "limits_sweep_seconds": 3600},
    )


async def test_a_burst_from_one_contact_is_one_turn_one_read_mark_one_reply(db_url: str) -> None:
    async with FakeGraph(token="test-token") as graph, run_gateway(_config(db_url, graph), env=ENV) as g:
        body = json.loads(text_webhook("wamid.BURST0", "one"))
        messages = body["entry"][0]["changes"][0]["value"]["messages"]
        for n, text in ((1, "two"), (2, "three")):
            messages.append({**messages[0], "id": f"wamid.BURST{n}", "text": {"body": text}})
        assert (await post(g, json.dumps(body).encode())).status_code == 200
        await wait_for(lambda: len(graph.sent) >= 1)
        await asyncio.sleep(0.3)  # nothing more follows
        assert len(graph.sent) == 1  # one turn answered the three messages
        # mark-as-read with typing once per turn, for its newest message (it marks the earlier ones too)
        assert [m["message_id"] for m in graph.read_marks] == ["wamid.BURST2"]


async def test_replies_to_many_contacts_leave_without_a_poll(db_url: str) -> None:
    async with FakeGraph(token="test-token") as graph, run_gateway(_config(db_url, graph), env=ENV) as g:
        for n in range(20):
            body = text_webhook(f"wamid.MANY{n}", f"hello {n}", sender=f"1650555{n:04d}")
            assert (await post(g, body)).status_code == 200
        await wait_for(lambda: len(graph.sent) == 20)
        assert sorted(s["text"]["body"] for s in graph.sent) == sorted(f"hello {n}" for n in range(20))
        for _ in range(50):  # the outcomes are recorded (in batches when sends finish together)
            parts = [await g.runtime.store.outbox.outbox_for(m.id) for m in await _replies(g)]
            if len(parts) == 20 and all(p and p[0]["status"] == "sent" for p in parts):
                break
            await asyncio.sleep(0.05)
        assert all(p[0]["status"] == "sent" and p[0]["attempts"] == 1 for p in parts)


async def _replies(g: Any) -> list[Any]:
    from gateway.store.sql import SessionQuery

    out = []
    for session in await g.runtime.store.sessions(SessionQuery(limit=100)):
        out += [m for m in await g.runtime.store.messages(session.id) if m.role == "assistant"]
    return out
