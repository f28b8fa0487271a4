"""The conversation service: the one writer of conversations.

Channels hand it typed inbound messages; it stores them (the store publishes the
events after the commit), runs one turn at a time per session through the agent,
streams the agent's deltas as live `bot.token` events, and stores the finished reply.
Observers (SSE feeds, chat sockets, agent processes) only read the bus and the store.

Split by noun: this module is the ingest and a session's life (start, context, end,
erase, resume after a restart); `gateway.takeover` pauses, hands back and sends as a
person; `gateway.replies` runs a turn; `gateway.streaming` publishes a reply while it
is made; `gateway.history` is what the agent remembers; `gateway.observations` is what
a channel or an agent process tells it outside a turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import NoResultFound

from gateway.bus.facade import Bus
from gateway.control import Control
from gateway.delivery import Delivery
from gateway.directory import AgentDirectory
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.events import ContactRef, Event, InboundMessage
from gateway.fairness import TenantGate
from gateway.history import EarlierConversations
from gateway.metrics import Metrics
from gateway.observations import AGENT_DECLARED, Observations
from gateway.replies import AgentFactory, Replies
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from gateway.store.sql import Ingested, Store
from gateway.streaming import TokenStream
from gateway.takeover import STOP_TURN, Takeover
from gateway.turn_lease import TurnLeases
from gateway.turns import TurnRunner
from gateway.types import Channel

__all__ = ["AgentFactory", "ConversationService", "TokenStream", "check_text"]

log = logging.getLogger("gateway.conversations")

# Turns reading their session, messages and history at once. Turns spend most of their
# life waiting on the agent, so many may run; but if a burst's hundreds of turns all read
# at once, every one waits on the pool behind all the others and no reply is ready until
# the whole burst has read. A small gate lets the first turns reply (and send) first.
READING_TURNS = 8


def check_text(text: object, limit: int) -> str:
    """The text rules every channel applies to what a user types."""
    if not isinstance(text, str):
        raise BadRequest("`text` must be a string", code="invalid_text")
    if not text.strip():
        raise BadRequest("`text` must not be empty", code="empty_text")
    if len(text) > limit:
        raise BadRequest(f"`text` is longer than {limit} characters", code="text_too_long")
    return text


class ConversationService(Takeover, Replies, Observations):
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        bus: Bus,
        directory: AgentDirectory,
        agents: AgentFactory,
        metrics: Metrics,
        deliveries: Mapping[str, Delivery] | None = None,
        leases: TurnLeases | None = None,
        control: Control | None = None,
    ) -> None:
        self.settings = settings
        # Several instances: a running turn may live in another process (gateway/control.py).
        self.control = control if control is not None else Control(bus, shared=False)
        self.control.on(STOP_TURN, self.stop_turn_order)
        self.control.on(AGENT_DECLARED, self.agent_declared_order)
        # Store-and-forward channels by provider (filled by the composition root).
        self.deliveries: Mapping[str, Delivery] = deliveries if deliveries is not None else {}
        self.on_outbox: Callable[[], None] = lambda: None  # wakes the outbox worker
        self._background: set[asyncio.Task[None]] = set()
        self.store = store
        self.bus = bus
        self.directory = directory
        self.agents = agents
        self.metrics = metrics
        self.tenant_gate = TenantGate(settings.server.tenant_max_concurrent_turns)
        self.turns = TurnRunner(
            self._run_turn,
            give_up=self._give_up,
            max_concurrent=settings.server.max_concurrent_turns,
            gate=self._tenant_slot if self.tenant_gate.limit else None,
            leases=leases,
        )
        self.earlier = EarlierConversations(store)
        self._flush_s = settings.server.token_flush_ms / 1000
        self._reading = asyncio.Semaphore(READING_TURNS)

    # ------------------------------------------------------------- sessions

    async def start_session(
        self,
        *,
        agent_id: str,
        channel: Channel,
        contact: ContactRef | None = None,
        direction: str = "inbound",
        metadata: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        self.directory.get(agent_id)
        session, _ = await self.store.start_session(
            agent_id=agent_id,
            channel=channel,
            contact=contact,
            direction=direction,
            meta=dict(metadata or {}),
            endpoint=endpoint,
            session_id=session_id,
        )
        return session

    async def receive(self, message: InboundMessage) -> Ingested:
        """Store a user message (durably, with its event), then schedule the turn."""
        self.directory.get(message.agent)
        # Checked inside the write (no read first): an unknown or ended session stores nothing.
        try:
            result = await self.store.ingest_message(**_spec(message), active_only=True)
        except NoResultFound:
            raise NotFound(f"no session {message.session_id!r}", code="unknown_session") from None
        if result.ended:
            raise Conflict(f"session {result.session.id} has ended", code="session_ended")
        self._schedule(result, message.agent)
        return result

    async def receive_many(self, messages: list[InboundMessage]) -> list[Ingested]:
        """A webhook batch: every message stored in one transaction, then their turns scheduled."""
        for message in messages:
            self.directory.get(message.agent)
        results = await self.store.ingest_many([_spec(m) for m in messages])
        for result, message in zip(results, messages, strict=True):
            self._schedule(result, message.agent)
        return results

    def _schedule(self, result: Ingested, agent_id: str) -> None:
        if result.message is not None and result.message.pending:
            sid = result.session.id
            self.turns.submit(sid)
            if self.directory.get(agent_id).interrupt:
                # The reply being streamed is dropped; the next turn answers it all together.
                self.turns.cancel(sid)

    async def set_context(self, session_id: str, key: str, value: Any) -> None:
        session = await self.session(session_id)
        context = dict(session.context)
        if value is None:
            context.pop(key, None)
        else:
            context[key] = value
        await self.store.update_session(session_id, context=context)

    async def end_session(
        self,
        session_id: str,
        reason: str,
        extra: dict[str, Any] | None = None,
        *,
        before: Sequence[Event] = (),
    ) -> SessionRecord:
        self.stop_turn(session_id)
        self.earlier.forget(session_id)
        session, _ = await self.store.end_session(session_id, reason, extra, before)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session

    async def erase_session(self, session_id: str, *, by: str | None = None) -> SessionRecord:
        self.stop_turn(session_id)
        self.earlier.clear()  # an erased conversation must never come back as someone's history
        session, _ = await self.store.erase_session(session_id, by=by)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session

    async def resume_pending(self) -> int:
        """After a restart: run the turns whose user messages were never answered."""
        # A call's reply is only worth making when its relay is back (it then runs the turn).
        sessions = await self.store.pending_sessions(exclude_channels=[str(Channel.PHONE)])
        for session_id in sessions:
            self.turns.submit(session_id)
        if sessions:
            log.info("resuming %d pending turns", len(sessions))
        return len(sessions)

    async def adopt_orphans(self) -> int:
        """Several instances: run the pending turns no live process holds (their owner died)."""
        # A session this instance is already about to run (its worker waits for the database
        # under load) is not an orphan.
        sessions = [
            s for s in await self.turns.leases.orphans([str(Channel.PHONE)]) if not self.turns.queued(s)
        ]
        for session_id in sessions:
            self.turns.submit(session_id)
        if sessions:
            log.warning("adopting %d pending turns no live instance holds", len(sessions))
        return len(sessions)

    async def adopt_forever(self, every_seconds: float) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                await self.adopt_orphans()
            except Exception as exc:  # the database is away: the next round tries again
                log.warning("could not look for orphaned turns: %r", exc)


def _spec(message: InboundMessage) -> dict[str, Any]:
    return {
        "agent_id": message.agent,
        "channel": message.channel,
        "text": message.text,
        "type": message.type,
        "contact": message.contact,
        "session_id": message.session_id,
        "provider_message_id": message.provider_message_id,
        "parts": message.parts,
        "meta": dict(message.metadata),
        "extra": dict(message.extra) or None,
        "endpoint": message.endpoint,
        "turn": message.turn,
        "message_meta": dict(message.message_meta) or None,
    }
