"""The store against both real databases: idempotent ingest, commit-ordered seq, single-use tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.events import ContactRef, Event, now_ms
from gateway.settings import ServerConfig
from gateway.store import db
from gateway.store.outbox import OutboxPart
from gateway.store.records import TokenRecord
from gateway.store.sql import NewMessage, SessionQuery, Store
from gateway.types import Channel, EventType


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await db.upgrade(db_url)
    published: list[Event] = []
    s = Store(db.create_engine(db_url), on_commit=published.extend)
    s.published = published  # type: ignore[attr-defined]
    await s.sync_agents({"support": {"answer": "echo"}})
    yield s
    await s.close()


def alice(n: int = 0) -> ContactRef:
    return ContactRef(channel=Channel.WHATSAPP, address=f"3460000000{n}", name="Alice")


async def test_ingest_is_idempotent_by_provider_id(store: Store) -> None:
    first = await store.ingest_message(
        agent_id="support",
        channel=Channel.WHATSAPP,
        text="hi",
        contact=alice(),
        provider_message_id="wamid.1",
    )
    again = await store.ingest_message(
        agent_id="support",
        channel=Channel.WHATSAPP,
        text="hi",
        contact=alice(),
        provider_message_id="wamid.1",
    )
    assert first.started and not first.duplicate and first.message is not None
    assert again.duplicate and again.message is None and again.events == []
    assert again.session.id == first.session.id
    assert [m.text for m in await store.messages(first.session.id)] == ["hi"]
    types = [e.type for e in await store.events_after(0)]
    assert types == ["session.started", "user.message"]


async def test_one_active_session_per_agent_and_contact(store: Store) -> None:
    a = await store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="1", contact=alice())
    b = await store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="2", contact=alice())
    assert a.session.id == b.session.id and a.session.id.startswith("wa-") and len(a.session.id) == 15
    await store.end_session(a.session.id, "idle_timeout")
    c = await store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="3", contact=alice())
    assert c.started and c.session.id != a.session.id


async def test_seq_is_commit_ordered_under_concurrency(store: Store) -> None:
    async def one(i: int) -> None:
        await store.ingest_message(
            agent_id="support",
            channel=Channel.WHATSAPP,
            text=str(i),
            contact=alice(i % 5),
            provider_message_id=f"w{i}",
        )

    await asyncio.gather(*(one(i) for i in range(60)))
    events = await store.events_after(0, limit=1000)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The bus hand-off sees the events in seq order too (no feed can skip one).
    published = [e.seq for e in store.published]  # type: ignore[attr-defined]
    assert published == seqs
    assert await store.last_seq() == seqs[-1]


async def test_token_is_single_use_across_concurrent_redeems(store: Store) -> None:
    await store.add_token(
        "h" * 64,
        TokenRecord(
            agent_id="support", channel="chat", session_id=None, meta={}, expires_at=now_ms() + 60_000
        ),
    )
    results = await asyncio.gather(*(store.consume_token("h" * 64) for _ in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_expired_token_is_refused(store: Store) -> None:
    await store.add_token(
        "e" * 64,
        TokenRecord(agent_id="support", channel="chat", session_id=None, meta={}, expires_at=now_ms() - 1),
    )
    assert await store.consume_token("e" * 64) is None


async def test_reply_settles_pending_and_erase_leaves_tombstone(store: Store) -> None:
    got = await store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="q", contact=alice())
    assert got.message is not None and got.message.pending
    assert await store.pending_sessions() == [got.session.id]
    await store.record_reply(
        session_id=got.session.id,
        answered=[got.message.id],
        messages=[NewMessage(id="msg_reply", role="assistant", text="a", in_reply_to=got.message.id)],
        events=[
            Event(
                type=EventType.BOT_MESSAGE,
                agent="support",
                session_id=got.session.id,
                data={"messageId": "msg_reply", "text": "a"},
            )
        ],
    )
    assert await store.pending_sessions() == []
    assert [(m.role, m.text) for m in await store.messages(got.session.id)] == [
        ("user", "q"),
        ("assistant", "a"),
    ]
    erased, _events = await store.erase_session(got.session.id)
    assert erased is not None and erased.status == "ended" and erased.end_reason == "erased"
    assert await store.messages(got.session.id) == []
    remaining = await store.events_after(0, session_id=got.session.id)
    assert [e.type for e in remaining] == ["session.ended"]  # only the tombstone's own event


async def test_session_listing_keyset_pagination(store: Store) -> None:
    for i in range(7):
        await store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="x", contact=alice(i))
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.sessions(SessionQuery(limit=3, cursor=cursor))
        seen += [s.id for s in page]
        if len(page) < 3:
            break
        cursor = (page[-1].started_at, page[-1].id)
    assert len(seen) == 7 and len(set(seen)) == 7
    only = await store.sessions(SessionQuery(contact="34600000003"))
    assert len(only) == 1 and only[0].contact is not None and only[0].contact.name == "Alice"


async def test_outbox_part_caught_mid_send_is_settled_by_its_receipt_or_failed_never_resent(
    store: Store,
) -> None:
    from gateway.store.outbox import OutboxPart

    got = await store.ingest_message(
        agent_id="support", channel=Channel.WHATSAPP, text="q", contact=alice(), endpoint="whatsapp:1"
    )
    sid = got.session.id
    for n in (1, 2):
        await store.record_reply(
            session_id=sid,
            answered=[],
            messages=[NewMessage(id=f"msg_r{n}", role="assistant", text="a")],
            events=[],
            outbox=[OutboxPart(payload={"n": n}, part=0, parts=1)],
        )
    claimed = await store.outbox.claim_due()
    assert [c.message_id for c in claimed] == ["msg_r1"]  # one part per session at a time, in order
    assert await store.outbox.recover_in_flight(grace_ms=0) == 1  # the process "died" mid-call
    assert await store.outbox.claim_due() == []  # an uncertain part blocks its session; it is not resent
    events = await store.outbox.delivery_status(
        channel="whatsapp", provider_message_id="wamid.X", status="sent", idempotency_key="msg_r1:0"
    )
    assert [e.data["status"] for e in events] == ["sent"]  # the receipt proves it went out
    nxt = await store.outbox.claim_due()
    assert [c.message_id for c in nxt] == ["msg_r2"]
    await store.outbox.recover_in_flight(grace_ms=0)
    # No receipt came within the grace period: it most likely never went out, so it is sent again.
    assert await store.outbox.expire_uncertain(max_attempts=8) == []
    again = await store.outbox.claim_due()
    assert [(c.message_id, c.attempts) for c in again] == [("msg_r2", 2)]
    (part,) = await store.outbox.outbox_for("msg_r2")
    assert part["error"]["code"] == "delivery_unknown"
    # Out of attempts, an unconfirmed part fails instead of looping.
    await store.outbox.recover_in_flight(grace_ms=0)
    failed = await store.outbox.expire_uncertain(max_attempts=2)
    assert [e.data["status"] for e in failed] == ["failed"]
    assert failed[0].data["error"]["code"] == "delivery_unknown"
    assert await store.outbox.claim_due() == []


async def test_a_send_that_may_have_gone_out_is_never_retried_blindly(store: Store) -> None:
    from gateway.delivery import SendFailed
    from gateway.outbox import Outbox
    from gateway.settings import ServerConfig
    from gateway.store.outbox import OutboxPart

    calls: list[str] = []

    class TimesOut:  # a Delivery whose provider accepted the part but the response never came
        async def send(self, item: Any) -> str:
            calls.append(item.idempotency_key)
            raise SendFailed("timeout", "read timed out", retryable=True, maybe_sent=True)

    got = await store.ingest_message(
        agent_id="support", channel=Channel.WHATSAPP, text="q", contact=alice(), endpoint="whatsapp:1"
    )
    await store.record_reply(
        session_id=got.session.id,
        answered=[],
        events=[],
        messages=[NewMessage(id="msg_t", role="assistant", text="a")],
        outbox=[OutboxPart(payload={}, part=0, parts=1)],
    )
    config = ServerConfig(
        outbox_poll_seconds=0.02, outbox_retry_base_seconds=0.01, outbox_uncertain_grace_seconds=60
    )
    outbox = Outbox(store, {"whatsapp": TimesOut()}, config)  # type: ignore[dict-item]
    task = asyncio.create_task(outbox.run())
    await asyncio.sleep(0.5)
    task.cancel()
    assert calls == ["msg_t:0"]  # once, despite `retryable`
    parts = await store.outbox.outbox_for("msg_t")
    assert parts[0]["status"] == "uncertain"


async def _replies_for(store: Store, contacts: int) -> list[str]:
    message_ids = []
    for n in range(contacts):
        got = await store.ingest_message(
            agent_id="support",
            channel=Channel.WHATSAPP,
            text="q",
            contact=ContactRef(channel=Channel.WHATSAPP, address=f"3461{n:08d}", name=None),
            endpoint="whatsapp:1",
        )
        await store.record_reply(
            session_id=got.session.id,
            answered=[],
            events=[],
            messages=[NewMessage(id=f"msg_b{n}", role="assistant", text="a")],
            outbox=[OutboxPart(payload={}, part=0, parts=1)],
        )
        message_ids.append(f"msg_b{n}")
    return message_ids


async def _statuses(store: Store, message_ids: list[str]) -> list[str]:
    return [p["status"] for m in message_ids for p in await store.outbox.outbox_for(m)]


async def test_only_parts_whose_call_is_in_flight_are_sending(store: Store) -> None:
    """A backlog waits as `pending`: a crash during it catches at most the slots in flight."""
    from gateway.outbox import Outbox

    release = asyncio.Event()
    started: list[str] = []

    class Slow:
        async def send(self, item: Any) -> str:
            started.append(item.idempotency_key)
            await release.wait()
            return f"wamid.{item.message_id}"

    message_ids = await _replies_for(store, 12)
    config = ServerConfig(outbox_poll_seconds=0.02, outbox_concurrency=4)
    outbox = Outbox(store, {"whatsapp": Slow()}, config)  # type: ignore[dict-item]
    task = asyncio.create_task(outbox.run())
    async with asyncio.timeout(5):
        while len(started) < 4:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    statuses = await _statuses(store, message_ids)
    assert statuses.count("sending") == 4 and statuses.count("pending") == 8 and len(started) == 4
    release.set()
    async with asyncio.timeout(5):
        while (await _statuses(store, message_ids)).count("sent") < 12:
            await asyncio.sleep(0.02)
    await outbox.stop(1)
    await task
    assert sorted(started) == sorted(f"{m}:0" for m in message_ids)  # each exactly once


async def test_stop_leaves_nothing_sending(store: Store) -> None:
    """SIGTERM: sends in flight get the grace period; what is still running is uncertain,
    what was never attempted stays pending; no part is left `sending`."""
    from gateway.outbox import Outbox

    class Hangs:
        async def send(self, item: Any) -> str:
            await asyncio.sleep(3600)
            return "never"

    message_ids = await _replies_for(store, 6)
    config = ServerConfig(outbox_poll_seconds=0.02, outbox_concurrency=2)
    outbox = Outbox(store, {"whatsapp": Hangs()}, config)  # type: ignore[dict-item]
    task = asyncio.create_task(outbox.run())
    async with asyncio.timeout(5):
        while (await _statuses(store, message_ids)).count("sending") < 2:
            await asyncio.sleep(0.01)
    await outbox.stop(0.1)
    await task
    statuses = await _statuses(store, message_ids)
    assert sorted(statuses) == ["pending"] * 4 + ["uncertain"] * 2


async def test_a_receipt_that_overtakes_a_timed_out_send_is_kept(store: Store) -> None:
    """Meta's `sent` status arrived while the send's own response was still pending; the
    send then times out. The part stays sent: it is not made uncertain and resent."""
    (message_id,) = await _replies_for(store, 1)
    (item,) = await store.outbox.claim_due()
    await store.outbox.delivery_status(
        channel="whatsapp", provider_message_id="wamid.R", status="sent", idempotency_key=item.idempotency_key
    )
    await store.outbox.mark_uncertain(item.id, 0, {"code": "timeout", "message": "read timed out"})
    await store.outbox.mark_retry(item.id, 0, {"code": "timeout", "message": "read timed out"})
    assert await store.outbox.mark_failed(item.id, {"code": "x", "message": "y"}) == []
    assert await store.outbox.expire_uncertain(max_attempts=8) == []
    assert await store.outbox.claim_due() == []
    (part,) = await store.outbox.outbox_for(message_id)
    assert (part["status"], part["delivery"], part["providerMessageId"]) == ("sent", "sent", "wamid.R")


async def test_a_batch_is_stored_set_wise_with_the_same_rules_as_one_message(store: Store) -> None:
    await store.ingest_message(
        agent_id="support",
        channel=Channel.WHATSAPP,
        text="old",
        contact=alice(1),
        provider_message_id="w.old",
    )
    before = await store.last_seq()
    spec = {"agent_id": "support", "channel": Channel.WHATSAPP}
    got = await store.ingest_many(
        [
            {**spec, "text": "a1", "contact": alice(2), "provider_message_id": "w.a1"},
            {**spec, "text": "b1", "contact": alice(1), "provider_message_id": "w.b1"},
            {**spec, "text": "a2", "contact": alice(2), "provider_message_id": "w.a2"},
            {**spec, "text": "a1 again", "contact": alice(2), "provider_message_id": "w.a1"},
            {**spec, "text": "old again", "contact": alice(1), "provider_message_id": "w.old"},
        ]
    )
    a1, b1, a2, a1_dup, old_dup = got
    assert a1.started and not a2.started and a1.session.id == a2.session.id  # one new session
    assert not b1.started and b1.session.id == old_dup.session.id  # joined the active one
    assert a1_dup.duplicate and a1_dup.message is None and a1_dup.session.id == a1.session.id
    assert old_dup.duplicate and old_dup.message is None
    assert [m.text for m in await store.messages(a1.session.id)] == ["a1", "a2"]
    types = [(e.type, e.data.get("text")) for e in await store.events_after(before)]
    assert types == [
        ("session.started", None),
        ("user.message", "a1"),
        ("user.message", "b1"),
        ("user.message", "a2"),
    ]
    assert [e.type for e in a1.events] == ["session.started", "user.message"]
    assert [e.data["text"] for e in a2.events] == ["a2"]


async def test_a_part_left_uncertain_by_a_stop_waits_a_full_grace_after_the_restart(store: Store) -> None:
    """Cut mid-call at SIGTERM, then down longer than the grace period: its receipt comes
    only once the gateway is back, so the grace restarts then instead of resending at once."""
    (message_id,) = await _replies_for(store, 1)
    (item,) = await store.outbox.claim_due()
    await store.outbox.mark_uncertain(item.id, 0, {"code": "send_interrupted", "message": "stopped"})
    await asyncio.sleep(0.01)  # the gateway was down past the (zero) grace
    await store.outbox.recover_in_flight(grace_ms=60_000)  # the next start
    assert await store.outbox.expire_uncertain(max_attempts=8) == []
    assert await store.outbox.claim_due() == []  # still waiting for its receipt
    await store.outbox.delivery_status(
        channel="whatsapp", provider_message_id="wamid.L", status="sent", idempotency_key=item.idempotency_key
    )
    (part,) = await store.outbox.outbox_for(message_id)
    assert (part["status"], part["providerMessageId"]) == ("sent", "wamid.L")
