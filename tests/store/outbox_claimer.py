"""A claimer process for tests/store/test_outbox_claim_processes.py (not a test module).

`python -m tests.store.outbox_claimer DB_URL HANDED_JSON OUT_JSONL START`: from the
wall-clock time START (so that both processes race from the first part) it claims parts both
ways the gateway does (the hand-off's `claim` with every handed part, and the poll's
`claim_due`), "sends" each (a short sleep), records it sent, and logs claim and send
times, until no part is pending or in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from sqlalchemy import func, select

from gateway.store.db import create_engine
from gateway.store.models import OutboxRow
from gateway.store.records import OutboxItem
from gateway.store.sql import Store


async def main(url: str, handed_path: str, out_path: str, start: str) -> None:
    store = Store(create_engine(url))
    with open(handed_path) as f:
        handed = [OutboxItem(**d) for d in json.load(f)]
    async with store.engine.connect():  # connected before the start
        pass
    await asyncio.sleep(max(0.0, float(start) - time.time()))
    deadline = time.monotonic() + 60
    with open(out_path, "a") as out:

        def log(**record: object) -> None:
            out.write(json.dumps({"pid": os.getpid(), **record}) + "\n")
            out.flush()

        while time.monotonic() < deadline:
            got = await store.outbox.claim(handed) + await store.outbox.claim_due(limit=4)
            for item in got:
                log(id=item.id, sid=item.session_id, part=item.part, claimed=time.time_ns())
            await asyncio.sleep(0.003)  # the provider calls
            for item in got:
                log(id=item.id, before_sent=time.time_ns())
                await store.outbox.mark_sent(item.id, f"wamid.{item.id}")
            if not got:
                async with store.engine.connect() as conn:
                    left = await conn.scalar(
                        select(func.count())
                        .select_from(OutboxRow)
                        .where(OutboxRow.status.in_(("pending", "sending")))
                    )
                if not left:
                    break
                await asyncio.sleep(0.002)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
