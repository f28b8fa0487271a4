"""How many SQL statements one inbound WhatsApp message costs, answered by echo end to end.

A guard, not a benchmark: the count is deterministic, so a change that adds statements
to the hot path fails here. The budget is written here and in bench/README.md; lower it
when the core gets cheaper (issue "A fast core" aims at a handful per message).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from tests.conftest import make_settings, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.whatsapp.test_channel import ENV, number, post, status_webhook, text_webhook, wait_for

# Measured 2026-12-02 (SQLite), from the webhook POST to the reply's `sent` receipt
# recorded: 22 to 26 statements for the first message of a new contact (contact and session
# created, history looked up; the spread is start-up work that lands in the window), 17 for
# a message in the same session, with the one writer
# and the outbox handed the reply's parts (claim: one UPDATE; sent: three statements, fewer
# per part when sends finish together). Before: 35-37 and 29 (the ORM core and a polling
# outbox), 34 and 25 with the writer alone. Issue "A fast core" aims at a handful.
BUDGET_NEW_CONTACT = 28
BUDGET_SAME_SESSION = 19


async def test_statements_per_message_answered_by_echo_stay_within_budget(sqlite_url: str) -> None:
    async with FakeGraph(token="test-token") as graph:
        # No sweeper or poll runs during the count (the outbox is woken by the reply itself).
        config = make_settings(
            sqlite_url,
            agents={"support": {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)]}},
            server={"outbox_poll_seconds": 3600, "limits_sweep_seconds": 3600},
        )
        async with run_gateway(config, env=ENV) as g:
            statements: list[str] = []

            def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
                statements.append(statement)

            store = g.runtime.store
            # Reads, and the writer's own connection (on SQLite a second engine).
            engines = {id(e): e.sync_engine for e in (store.engine, store.write_engine)}.values()
            for engine in engines:
                event.listen(engine, "before_cursor_execute", count)
            try:
                costs = []
                for n in range(2):
                    statements.clear()
                    assert (await post(g, text_webhook(f"wamid.BUDGET{n}", f"hello {n}"))).status_code == 200
                    await wait_for(lambda n=n: len(graph.sent) == n + 1)
                    # the `sent` receipt is part of answering a message on WhatsApp
                    body = graph.sent[-1]
                    receipt = status_webhook(
                        graph.sent_ids[-1], "sent", opaque=body["biz_opaque_callback_data"]
                    )
                    assert (await post(g, receipt)).status_code == 200
                    await asyncio.sleep(0.3)  # the reply's outbox outcome is recorded
                    costs.append(len(statements))
            finally:
                for engine in engines:
                    event.remove(engine, "before_cursor_execute", count)
    new_contact, same_session = costs
    print(f"\nstatements per message: new contact {new_contact}, same session {same_session}")
    assert new_contact <= BUDGET_NEW_CONTACT, new_contact
    assert same_session <= BUDGET_SAME_SESSION, same_session
