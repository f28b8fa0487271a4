"""Two real processes claim from one outbox: each part is claimed exactly once, and a
session's parts are claimed in order, each only after the one before it was sent.

Both claim paths race (the hand-off's conditional UPDATE and the poll's `claim_due`),
on SQLite and on PostgreSQL, as two gateway instances sharing a database would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from gateway.events import ContactRef
from gateway.store import db
from gateway.store.outbox import OutboxPart
from gateway.store.records import OutboxItem
from gateway.store.sql import NewMessage, Store
from gateway.types import Channel

ROOT = Path(__file__).resolve().parents[2]
SESSIONS, REPLIES, PARTS = 8, 3, 2


async def test_two_processes_claim_each_part_once_and_each_session_in_order(
    db_url: str, tmp_path: Path
) -> None:
    await db.upgrade(db_url)
    store = Store(db.create_engine(db_url))
    await store.sync_agents({"support": {"answer": "echo"}})
    handed: list[OutboxItem] = []
    store.outbox.on_queued = handed.extend  # the parts each reply's commit hands over
    try:
        for n in range(SESSIONS):
            got = await store.ingest_message(
                agent_id="support",
                channel=Channel.WHATSAPP,
                text="q",
                contact=ContactRef(channel=Channel.WHATSAPP, address=f"3463000{n:04d}", name=None),
                endpoint="whatsapp:1",
            )
            for r in range(REPLIES):
                parts = [OutboxPart(payload={}, part=i, parts=PARTS) for i in range(PARTS)]
                message_id = f"msg_s{n}r{r}"
                await store.record_reply(
                    session_id=got.session.id,
                    answered=[],
                    messages=[NewMessage(id=message_id, role="assistant", text="a")],
                    events=[],
                    outbox=parts,
                )
    finally:
        await store.close()
    handed_path, out = tmp_path / "handed.json", tmp_path / "claims.jsonl"
    handed_path.write_text(json.dumps([dataclasses.asdict(i) for i in handed]))
    start = str(time.time() + 4)  # both are up by then: they race from the first part
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.store.outbox_claimer",
            db_url,
            str(handed_path),
            str(out),
            start,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 90)
    assert codes == [0, 0]

    records = [json.loads(line) for line in out.read_text().splitlines()]
    claims = [r for r in records if "claimed" in r]
    sent_at = {r["id"]: r["before_sent"] for r in records if "before_sent" in r}
    count = Counter(r["id"] for r in claims)
    assert sorted(count) == sorted(i.id for i in handed)  # every part went out ...
    assert set(count.values()) == {1}  # ... claimed exactly once
    assert len({r["pid"] for r in claims}) == 2  # both processes did claim
    order = {i.id: k for k, i in enumerate(handed)}  # commit order within each session
    by_session: dict[str, list[dict[str, int]]] = defaultdict(list)
    for r in claims:
        by_session[r["sid"]].append(r)
    for rows in by_session.values():
        rows.sort(key=lambda r: r["claimed"])
        assert [order[r["id"]] for r in rows] == sorted(order[r["id"]] for r in rows)
        for before, after in itertools.pairwise(rows):
            assert after["claimed"] > sent_at[before["id"]]  # one at a time: claimed once sent
