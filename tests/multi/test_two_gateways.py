"""Two gateways in one test process on one PostgreSQL and one Redis (each its own engine,
writer, hot state, turn runner and outbox): webhooks delivered to both at once.

Every delivery is acknowledged 200 (a concurrent redelivery is a duplicate, never a 500
or a deadlock), and each message is answered exactly once, a contact's in order: one turn
at a time per session across the two (gateway/turn_lease.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from channels.whatsapp.signature import sign
from tests.conftest import Running, make_settings, reset_postgres, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.services import PG_URL, need_postgres, redis_bus_url
from tests.whatsapp.test_channel import ENV, SECRET, number, text_webhook


def word(contact: int, k: int) -> str:
    return f"w{contact:03d}x{k}"


def sender(contact: int) -> str:
    return f"3463{contact:08d}"


@contextlib.asynccontextmanager
async def two(graph: FakeGraph) -> AsyncIterator[tuple[Running, Running]]:
    need_postgres()
    await reset_postgres()
    bus = redis_bus_url(f"two-{uuid.uuid4().hex}")
    server = {
        "bus_url": bus,
        "turn_lease_seconds": 2.0,
        "outbox_poll_seconds": 0.05,
        "outbox_retry_base_seconds": 0.05,
    }
    support = {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)]}
    cfg = make_settings(PG_URL, agents={"support": support}, server=server)
    async with run_gateway(cfg, env=ENV) as a, run_gateway(cfg, env=ENV) as b:
        yield a, b


@pytest.mark.timeout(120)
async def test_webhooks_to_two_gateways_at_once_are_answered_once_each_in_order() -> None:
    contacts, per_contact = 15, 4
    rng = random.Random(7)
    statuses: list[int] = []
    async with (
        FakeGraph(token="test-token") as graph,
        two(graph) as (a, b),
        httpx.AsyncClient(timeout=20) as http,
    ):

        async def post(node: Running, body: bytes) -> None:
            r = await http.post(
                f"{node.url}/whatsapp/webhook",
                content=body,
                headers={"content-type": "application/json", "x-hub-signature-256": sign(body, SECRET)},
            )
            statuses.append(r.status_code)

        def answered(contact: int) -> list[str]:
            to = sender(contact)
            return [
                w
                for body in graph.sent
                if str(body.get("to")).lstrip("+") == to
                for w in body["text"]["body"].split()
            ]

        async def contact(i: int) -> None:
            for k in range(0, per_contact, 2):
                # Two messages at once, one to each gateway, and each also to the other.
                one = text_webhook(f"wamid.T{i:03d}K{k}", word(i, k), sender(i))
                two_ = text_webhook(f"wamid.T{i:03d}K{k + 1}", word(i, k + 1), sender(i))
                first, second = rng.sample([a, b], 2)
                await asyncio.gather(
                    post(first, one), post(second, two_), post(second, one), post(first, two_)
                )
                async with asyncio.timeout(30):
                    while len(answered(i)) < k + 2:
                        await asyncio.sleep(0.02)

        await asyncio.gather(*(contact(i) for i in range(contacts)))
        await asyncio.sleep(0.5)  # a second answer would be sent by now

    assert set(statuses) == {200}, statuses
    keys = [body["biz_opaque_callback_data"] for body in graph.sent]
    assert len(keys) == len(set(keys))  # no part sent twice
    for i in range(contacts):
        words = answered(i)
        assert sorted(words) == sorted(word(i, k) for k in range(per_contact)), words  # once each
        for k in range(0, per_contact, 2):  # the pairs in order (within a pair, either order)
            assert set(words[k : k + 2]) == {word(i, k), word(i, k + 1)}, words
