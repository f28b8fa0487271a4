"""The store's one writer (group commit) against both real databases: what queued up
commits together, each caller answered after its own commit, a failing job fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import ContactRef, Event
from gateway.store import db
from gateway.store.models import MessageRow
from gateway.store.sql import Store
from gateway.types import Channel


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await db.upgrade(db_url)
    published: list[Event] = []
    s = Store(db.create_engine(db_url), on_commit=published.extend)
    s.published = published  # type: ignore[attr-defined]
    await s.sync_agents({"support": {"answer": "echo"}})
    yield s
    await s.close()


def contact(n: int) -> ContactRef:
    return ContactRef(channel=Channel.WHATSAPP, address=f"3470000{n:04d}", name=f"C{n}")


async def committed_messages(store: Store) -> int:
    async with store.engine.connect() as conn:  # another connection: sees only what committed
        return int((await conn.execute(select(func.count()).select_from(MessageRow))).scalar_one())


async def test_concurrent_messages_share_batches_and_each_is_answered_after_its_commit(store: Store) -> None:
    batches_before = store.writer.batches
    seen_on_answer: list[int] = []

    async def one(n: int) -> None:
        result = await store.ingest_message(
            agent_id="support",
            channel=Channel.WHATSAPP,
            text=f"m{n}",
            contact=contact(n % 10),
            provider_message_id=f"wamid.W{n}",
        )
        assert result.message is not None
        seen_on_answer.append(await committed_messages(store))

    await asyncio.gather(*(one(n) for n in range(100)))
    # Every caller found its message committed when it was answered; far fewer transactions
    # than messages (the first batch may hold only the first arrival).
    assert len(seen_on_answer) == 100 and min(seen_on_answer) >= 1
    assert await committed_messages(store) == 100
    assert store.writer.batches - batches_before <= 10
    # seq follows commit order and the bus saw it in that order
    seqs = [e.seq for e in store.published]  # type: ignore[attr-defined]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # ten contacts, so ten sessions, whatever the batching
    sessions = {e.session_id for e in store.published}  # type: ignore[attr-defined]
    assert len(sessions) == 10


async def test_a_duplicate_inside_one_batch_is_stored_once(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.ingest_message(
                agent_id="support",
                channel=Channel.WHATSAPP,
                text="same",
                contact=contact(1),
                provider_message_id="wamid.SAME",
            )
            for _ in range(5)
        )
    )
    assert sum(1 for r in results if not r.duplicate) == 1
    assert len({r.session.id for r in results}) == 1
    assert await committed_messages(store) == 1


async def test_a_failing_job_fails_alone_and_the_rest_of_its_batch_commits(store: Store) -> None:
    async def bad(s: AsyncSession) -> None:
        await s.execute(text("INSERT INTO no_such_table VALUES (1)"))

    async def good(n: int) -> str:
        result = await store.ingest_message(
            agent_id="support", channel=Channel.WHATSAPP, text="ok", contact=contact(n)
        )
        return result.session.id

    outcomes = await asyncio.gather(good(1), store.writer.run(bad), good(2), good(3), return_exceptions=True)
    assert isinstance(outcomes[1], Exception)
    assert all(isinstance(o, str) for o in (outcomes[0], outcomes[2], outcomes[3]))
    assert await committed_messages(store) == 3


async def test_a_caller_cancelled_while_queued_writes_nothing(store: Store) -> None:
    gate = asyncio.Event()

    async def slow(s: AsyncSession) -> None:
        await gate.wait()  # holds the writer in the middle of a batch

    first = asyncio.create_task(store.writer.run(slow))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(
        store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="never", contact=contact(1))
    )
    await asyncio.sleep(0.05)
    queued.cancel()
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await committed_messages(store) == 0


async def test_outbox_jobs_go_first(store: Store) -> None:
    gate = asyncio.Event()
    order: list[str] = []

    async def hold(s: AsyncSession) -> None:
        await gate.wait()

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run(s: AsyncSession) -> None:
            order.append(name)

        return run

    first = asyncio.create_task(store.writer.run(hold))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(store.writer.run(job(f"turn{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(store.writer.run(job("outbox"), urgent=True)))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *tasks)
    assert order == ["outbox", "turn0", "turn1", "turn2"]


async def test_concurrent_replies_merge_and_a_missing_session_fails_alone(store: Store) -> None:
    from gateway.store.sql import NewMessage

    sessions = []
    for n in range(12):
        r = await store.ingest_message(
            agent_id="support", channel=Channel.WHATSAPP, text="hi", contact=contact(n)
        )
        assert r.message is not None
        sessions.append((r.session.id, r.message.id))
    batches = store.writer.batches

    async def reply(sid: str, answered: str, n: int) -> list[Event]:
        return await store.record_reply(
            session_id=sid,
            answered=[answered],
            messages=[
                NewMessage(id=f"msg_reply{n:02d}", role="assistant", text=f"r{n}", in_reply_to=answered)
            ],
            events=[Event(type="bot.message", agent="support", session_id=sid, data={"n": n})],
        )

    outcomes = await asyncio.gather(
        *(reply(sid, mid, n) for n, (sid, mid) in enumerate(sessions)),
        reply("sess_missing", "msg_none", 99),
        return_exceptions=True,
    )
    assert isinstance(outcomes[-1], Exception)
    assert all(isinstance(o, list) and len(o) == 1 and o[0].seq for o in outcomes[:-1])
    assert store.writer.batches - batches <= 14  # merged, then rerun one by one for the failure
    for n, (sid, _) in enumerate(sessions):
        state = await store.turn_state(sid)  # the hot state saw the reply
        assert state is not None
        _, messages = state
        assert [m.text for m in messages] == ["hi", f"r{n}"] and not any(m.pending for m in messages)
        assert [m.text for m in await store.messages(sid)] == ["hi", f"r{n}"]


async def test_store_and_forward_turns_wait_while_inbound_messages_stream_in(store: Store) -> None:
    """`Writer.admit`: acknowledgements first, turns one per commit meanwhile, all once quiet."""
    gate = asyncio.Event()

    async def hold(s: AsyncSession) -> None:
        await gate.wait()

    held = asyncio.create_task(store.writer.run(hold))
    await asyncio.sleep(0.02)
    inbound = [
        asyncio.create_task(
            store.ingest_message(agent_id="support", channel=Channel.WHATSAPP, text="x", contact=contact(n))
        )
        for n in range(3)
    ]
    await asyncio.sleep(0.02)
    turns = [asyncio.create_task(store.writer.admit()) for _ in range(5)]
    await asyncio.sleep(0.02)
    assert not any(t.done() for t in turns)  # inbound queued: the turns wait
    gate.set()
    await asyncio.gather(held, *inbound)
    async with asyncio.timeout(2):  # the stream stopped: every waiter goes soon after
        await asyncio.gather(*turns)
    await store.writer.admit()  # nothing queued, nothing recent: no wait
