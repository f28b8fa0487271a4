"""The outbox's hot path: parts handed over by the reply's commit, claimed without a poll.

Real databases (SQLite and PostgreSQL); the provider is a recording `Delivery`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event

from gateway.events import ContactRef, Event
from gateway.outbox import Outbox
from gateway.settings import ServerConfig
from gateway.store import db
from gateway.store.outbox import OutboxPart
from gateway.store.records import OutboxItem, SessionRecord
from gateway.store.sql import NewMessage, Store
from gateway.types import Channel


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await db.upgrade(db_url)
    published: list[Event] = []
    s = Store(db.create_engine(db_url), on_commit=published.extend)
    await s.sync_agents({"support": {"answer": "echo"}})
    yield s
    await s.close()


async def _session(store: Store, n: int = 0) -> SessionRecord:
    got = await store.ingest_message(
        agent_id="support",
        channel=Channel.WHATSAPP,
        text="q",
        contact=ContactRef(channel=Channel.WHATSAPP, address=f"3462000000{n}", name=None),
        endpoint="whatsapp:1",
    )
    return got.session


async def _reply(store: Store, session: SessionRecord, message_id: str, parts: int = 1) -> list[OutboxItem]:
    """Store a reply of `parts` parts; the parts its commit handed over (`on_queued`)."""
    outbox = [OutboxPart(payload={"m": message_id, "p": i}, part=i, parts=parts) for i in range(parts)]
    handed: list[OutboxItem] = []
    store.outbox.on_queued = handed.extend
    try:
        await store.record_reply(
            session_id=session.id,
            answered=[],
            messages=[NewMessage(id=message_id, role="assistant", text="a")],
            events=[],
            outbox=outbox,
        )
    finally:
        store.outbox.on_queued = None
    assert [i.part for i in handed] == list(range(parts))
    return handed


async def test_handed_parts_are_claimed_once_and_in_order(store: Store) -> None:
    session = await _session(store)
    r1 = await _reply(store, session, "msg_h1", parts=2)
    r2 = await _reply(store, session, "msg_h2")
    claimed = await store.outbox.claim([*r1, *r2])
    assert [(c.message_id, c.part, c.attempts) for c in claimed] == [("msg_h1", 0, 1)]
    assert await store.outbox.claim([*r1, *r2]) == []  # claimed once; the rest waits its turn
    # Two claimers race for the same part: exactly one gets it.
    await store.outbox.mark_sent(r1[0].id, "wamid.h1-0")
    both = await asyncio.gather(store.outbox.claim([r1[1]]), store.outbox.claim([r1[1]]))
    assert sorted(len(b) for b in both) == [0, 1]
    assert await store.outbox.claim_due() == []  # the poll does not take a part in flight either
    await store.outbox.mark_sent(r1[1].id, "wamid.h1-1")
    assert [c.message_id for c in await store.outbox.claim(r2)] == ["msg_h2"]
    assert [p["status"] for p in await store.outbox.outbox_for("msg_h1")] == ["sent", "sent"]


async def test_a_handed_part_waits_behind_an_earlier_part_of_its_session(store: Store) -> None:
    session, other = await _session(store, 1), await _session(store, 2)
    (first,) = await _reply(store, session, "msg_w1")
    (claimed,) = await store.outbox.claim([first])
    await store.outbox.mark_retry(claimed.id, at=2**62, error={"code": "rate_limited", "message": "later"})
    (second,) = await _reply(store, session, "msg_w2")
    (elsewhere,) = await _reply(store, other, "msg_w3")
    # The first part backs off: the second may not overtake it, another session goes on.
    assert [c.message_id for c in await store.outbox.claim([second, elsewhere])] == ["msg_w3"]
    assert await store.outbox.claim_due() == []


async def test_a_receipt_that_overtook_the_send_is_not_undone(store: Store) -> None:
    session = await _session(store, 3)
    (part,) = await _reply(store, session, "msg_o1")
    await store.outbox.claim([part])
    # The provider's `delivered` webhook arrives before the send's own response.
    early = await store.outbox.delivery_status(
        channel="whatsapp",
        provider_message_id="wamid.o1",
        status="delivered",
        idempotency_key=part.idempotency_key,
    )
    assert [e.data["status"] for e in early] == ["delivered"]
    assert await store.outbox.mark_sent(part.id, "wamid.o1") == []  # nothing moves backwards
    (row,) = await store.outbox.outbox_for("msg_o1")
    assert (row["status"], row["delivery"], row["providerMessageId"]) == ("sent", "delivered", "wamid.o1")
    (message,) = [m for m in await store.messages(session.id) if m.id == "msg_o1"]
    assert message.status == "delivered"
    # A failed send's outcome is ignored too once the part is no longer `sending`.
    await store.outbox.mark_retry(part.id, at=0, error={"code": "x", "message": "x"})
    assert await store.outbox.mark_failed(part.id, {"code": "x", "message": "x"}) == []
    (row,) = await store.outbox.outbox_for("msg_o1")
    assert (row["status"], row["delivery"]) == ("sent", "delivered")


async def test_the_reply_commit_hands_parts_to_the_sender_without_polling(store: Store) -> None:
    sent: list[str] = []

    class Records:
        async def send(self, item: OutboxItem) -> str:
            sent.append(item.message_id)
            return f"wamid.{item.message_id}"

    config = ServerConfig(outbox_poll_seconds=3600)  # no poll during the test
    outbox = Outbox(store, {"whatsapp": Records()}, config)  # type: ignore[dict-item]
    task = asyncio.create_task(outbox.run())
    sessions = [await _session(store, 4 + n) for n in range(3)]
    await asyncio.sleep(0.2)  # the start-up recovery poll is over
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for n, session in enumerate(sessions):
            outbox.wake(await _reply(store, session, f"msg_n{n}"))
        for _ in range(100):
            if len(sent) == 3:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the outcomes are recorded
    finally:
        event.remove(engine, "before_cursor_execute", count)
        await outbox.stop(1.0)
        task.cancel()
    assert sorted(sent) == ["msg_n0", "msg_n1", "msg_n2"]
    outbox_selects = [s for s in statements if s.upper().startswith("SELECT") and "FROM OUTBOX" in s.upper()]
    assert outbox_selects == []  # no claim or poll query: the commit handed the parts over
    for n in range(3):
        (row,) = await store.outbox.outbox_for(f"msg_n{n}")
        assert (row["status"], row["delivery"], row["attempts"]) == ("sent", "sent", 1)


async def test_sends_finished_together_are_recorded_in_one_transaction(store: Store) -> None:
    one, several, overtaken = [await _session(store, 10 + n) for n in range(3)]
    (a,) = await _reply(store, one, "msg_b1")
    b0, b1 = await _reply(store, several, "msg_b2", parts=2)
    (c,) = await _reply(store, overtaken, "msg_b3")
    assert len(await store.outbox.claim([a, b0, b1, c])) == 3
    await store.outbox.delivery_status(
        channel="whatsapp", provider_message_id="wamid.c", status="read", idempotency_key=c.idempotency_key
    )
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        events = await store.outbox.mark_sent_many([(a, "wamid.a"), (b0, "wamid.b0"), (c, "wamid.c")])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [(e.data["messageId"], e.data["status"]) for e in events] == [
        ("msg_b1", "sent"),
        ("msg_b2", "sent"),
    ]
    writes = [s for s in statements if s.split()[0].upper() in ("UPDATE", "INSERT", "SELECT")]
    assert len(writes) <= 6, writes  # not per part (pg adds its advisory lock)
    rows = {
        m: [(p["status"], p["delivery"], p["providerMessageId"]) for p in await store.outbox.outbox_for(m)]
        for m in ("msg_b1", "msg_b2", "msg_b3")
    }
    assert rows == {
        "msg_b1": [("sent", "sent", "wamid.a")],
        "msg_b2": [("sent", "sent", "wamid.b0"), ("pending", None, None)],
        "msg_b3": [("sent", "read", "wamid.c")],  # the receipt that came first stands
    }
    statuses = {}
    for session in (one, several, overtaken):
        for m in await store.messages(session.id):
            if m.role == "assistant":
                statuses[m.id] = (m.status, m.provider_message_id)
    assert statuses == {
        "msg_b1": ("sent", "wamid.a"),
        "msg_b2": ("queued", "wamid.b0"),  # its second part is not sent yet
        "msg_b3": ("read", "wamid.c"),
    }
