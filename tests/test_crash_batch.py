"""SIGKILL while the writer is committing a batch: nothing acknowledged is lost or answered twice.

A real `gateway serve` process stores 100 signed WhatsApp webhooks (acknowledged), then
this test blocks the database under the writer: on SQLite another connection holds the
write lock (`BEGIN IMMEDIATE`), on PostgreSQL it holds the event log's advisory lock.
64 more webhooks arrive at once; the writer takes them as one batch and stops inside its
transaction (SQLite: at its first write; PostgreSQL: with the messages inserted, waiting
to append their events). None of them is acknowledged. The process is SIGKILLed there,
the database released, the gateway restarted, and "Meta" redelivers every webhook that
got no 200 (and some that did). Afterwards every message was answered by exactly one
reply; a reply part was sent twice only if its send was in flight at the kill (its
outcome unrecorded: the documented rule of tests/test_crash.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from gateway.store.writer import EVENT_LOCK_KEY
from tests.conftest import free_port
from tests.fakes.graph_server import FakeGraph
from tests.test_crash import GRACE, SECRET, Meta, config, parts_with, sender, until, word
from tests.test_process import Proc, procs  # noqa: F401  (fixture)
from tests.whatsapp.test_channel import text_webhook

CONTACTS = 41  # 100 first, then 64 in the batch: 164 messages, four per contact or so


@contextlib.asynccontextmanager
async def writes_blocked(db_url: str) -> AsyncIterator[None]:
    """Hold the database so that the gateway's writer stops inside its transaction."""
    if db_url.startswith("sqlite"):
        path = make_url(db_url).database
        assert path
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")  # the write lock, until ROLLBACK
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import asyncpg

    url = make_url(db_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    await conn.execute("SELECT pg_advisory_lock($1)", EVENT_LOCK_KEY)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", EVENT_LOCK_KEY)
        await conn.close()


@pytest.mark.timeout(180)
async def test_sigkill_mid_batch_answers_every_acknowledged_message_exactly_once(
    tmp_path: Path,
    db_url: str,
    procs: list[Proc],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WA_TOKEN", "tok")
    monkeypatch.setenv("WA_SECRET", SECRET)
    webhooks = [
        (
            f"wamid.B{n:04d}",
            text_webhook(f"wamid.B{n:04d}", word(n % CONTACTS, n), sender=sender(n % CONTACTS)),
        )
        for n in range(164)
    ]
    before, batch = webhooks[:100], webhooks[100:]
    async with FakeGraph(token="tok") as graph:
        graph.latency = 0.01
        path = config(tmp_path, db_url, graph)
        port = free_port()
        first = Proc(path, port, "--migrate")
        procs.append(first)
        await first.ready()
        meta = Meta(first.url, graph)
        try:
            await meta.deliver(before)
            assert meta.acked == {w for w, _ in before}
            async with writes_blocked(db_url):
                in_batch = asyncio.create_task(meta.deliver(batch, concurrency=64))
                await asyncio.sleep(1.5)  # every one is in; the writer is stuck inside the batch
                assert not (meta.acked & {w for w, _ in batch}), "acknowledged before the commit"
                first.p.send_signal(signal.SIGKILL)
                assert await first.wait() == -signal.SIGKILL
                # Sends whose outcome the writer could not record before the kill: `sending`
                # after it, so resent after the grace unless a receipt settles them (the
                # documented rule, tests/test_crash.py); none of them is a second reply.
                mid_call = await parts_with(db_url, "sending")
            second = Proc(path, port)
            procs.append(second)
            await second.ready()
            # Meta retries the unacknowledged ones, and redelivers some acknowledged ones too.
            await asyncio.gather(in_batch, meta.deliver(before[::7], concurrency=4))
            assert meta.acked == {w for w, _ in webhooks}

            def answered() -> set[str]:
                return {w for b in graph.sent for w in b.get("text", {}).get("body", "").split()}

            everything = {word(n % CONTACTS, n) for n in range(164)}
            await until(lambda: everything <= answered(), 60, "every message answered")
            await asyncio.sleep(0.5)  # a second reply, if there were one, would be out by now
            if mid_call:
                await asyncio.sleep(GRACE + 1)  # let the rule resend what it resends
        finally:
            await meta.client.aclose()

    keys = Counter(b["biz_opaque_callback_data"] for b in graph.sent)
    twice = {k for k, n in keys.items() if n > 1}
    assert twice <= mid_call, f"sent twice though never mid-call: {sorted(twice - mid_call)}"
    per_word: Counter[str] = Counter()
    seen: set[str] = set()
    for b in graph.sent:  # each reply once, however often its part was sent
        if b["biz_opaque_callback_data"] in seen:
            continue
        seen.add(b["biz_opaque_callback_data"])
        per_word.update(b["text"]["body"].split())
    assert set(per_word) == everything
    assert max(per_word.values()) == 1, per_word.most_common(3)  # one reply per message
