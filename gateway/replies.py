"""Turns: what the turn runner (gateway/turns.py) calls for a session, and how a turn fails.

`_run_turn` starts from the session's hot state (gateway/store/hot.py: what its inbound
message committed, no read) and hands the turn to `gateway.reply_run.ReplyRun`. The
messages a turn answers stay pending until its reply (or its error) is stored, so a
crash anywhere runs the turn again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

from gateway.agents.base import Agent
from gateway.bus.facade import Bus
from gateway.delivery import Delivery, provider_of
from gateway.directory import AgentDirectory
from gateway.events import Event
from gateway.fairness import TenantGate
from gateway.history import EarlierConversations
from gateway.metrics import Metrics
from gateway.redact import redact_url
from gateway.reply_run import ReplyRun
from gateway.settings import AgentConfig
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import Store
from gateway.types import EventType

log = logging.getLogger("gateway.conversations")


class AgentFactory(Protocol):
    def agent_for(self, agent_id: str, config: AgentConfig) -> Agent: ...


class Replies:
    """The turn half of `ConversationService` (which sets these attributes)."""

    store: Store
    bus: Bus
    directory: AgentDirectory
    agents: AgentFactory
    metrics: Metrics
    deliveries: Mapping[str, Delivery]
    on_outbox: Callable[[], None]
    tenant_gate: TenantGate
    earlier: EarlierConversations
    _reading: asyncio.Semaphore
    _flush_s: float
    _background: set[asyncio.Task[None]]

    @contextlib.asynccontextmanager
    async def _tenant_slot(self, session_id: str) -> AsyncIterator[None]:
        """A turn waits for its tenant's slot before it takes a gateway-wide one, so a
        tenant's flood never holds the slots other tenants need (docs/tenants.md, "Limits")."""
        try:
            state = await self.store.turn_state(session_id)
        except Exception:  # the turn itself will meet (and retry) the database error
            state = None
        config = None if state is None else self.directory.find(state[0].agent_id)
        async with self.tenant_gate.slot(None if config is None else config.tenant):
            yield

    async def _run_turn(self, session_id: str) -> None:
        async with self._reading:
            # From the hot state its inbound message left (gateway/store/hot.py), or read once.
            state = await self.store.turn_state(session_id)
        if state is None:
            return
        session, messages = state
        if not session.active or session.paused:
            return  # paused: a human has the conversation; no agent turn runs
        pending = [m for m in messages if m.pending and m.role == "user"]
        if not pending:
            return
        if provider_of(session) in self.deliveries:
            # A store-and-forward reply can wait a moment: while inbound messages queue up at
            # the writer, their acknowledgements go first (one such turn is let through per
            # commit, all of them once the queue is empty). Chat, SSE and calls never wait.
            await self.store.writer.admit()
            if (state := await self.store.turn_state(session_id)) is None:
                return
            session, messages = state
            pending = [m for m in messages if m.pending and m.role == "user"]
            if not session.active or session.paused or not pending:
                return
        config = self.directory.find(session.agent_id)
        if config is None:
            await self._fail(
                session, pending, pending[-1].id, "unknown_agent", f"agent {session.agent_id!r} is gone"
            )
            return
        await ReplyRun(self, session, messages, pending, config).run()

    async def _give_up(self, session_id: str, _exc: BaseException) -> None:
        """A turn that kept failing on a gateway bug: answer its messages with an error
        instead of leaving the session stuck (the log has the traceback)."""
        session = await self.store.session(session_id)
        if session is None:
            return
        pending = [m for m in await self.store.messages(session_id) if m.pending and m.role == "user"]
        if pending:
            await self._fail(
                session, pending, pending[-1].id, "turn_failed", "the gateway could not run this turn"
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _typing(self, delivery: Delivery, session: SessionRecord, message: MessageRecord) -> None:
        try:
            async with asyncio.timeout(10):
                await delivery.typing(session, message)
        except Exception as exc:  # best effort: a typing indicator never fails a turn
            log.info("typing indicator failed: %r", exc, extra={"session_id": session.id})

    async def _fail(
        self, session: SessionRecord, pending: list[MessageRecord], last: str, code: str, message: str
    ) -> None:
        # The reason reaches feeds and the person's chat: an endpoint URL in it may carry a
        # key (`?api-key=`) or a password; mask them as the logs do.
        message = redact_url(message)
        log.warning("turn failed: %s", message, extra={"session_id": session.id, "message_id": last})
        self.metrics.turns.labels(session.agent_id, "error").inc()
        await self.store.settle_pending(
            session.id,
            [m.id for m in pending],
            [
                Event(
                    type=EventType.SESSION_ERROR,
                    agent=session.agent_id,
                    session_id=session.id,
                    channel=session.channel,
                    data={"code": code, "message": message, "inReplyTo": last},
                )
            ],
        )
