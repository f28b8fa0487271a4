"""The store: every query and transaction of the gateway, and nothing else.

`Store` is the repositories by noun in one object over one shared layer
(`gateway.store.core`: the writer, reads, the event log, hot state). Each public
method is one transaction (one job of the writer, committed with whatever else
queued up) or one read. Nothing outside `gateway/store/` touches a database session.

| module | owns |
|---|---|
| `core` | the writer, reads, `seq`-ordered event append, hot state, shared helpers |
| `ingest` | inbound messages (dedupe, contact, session, events), set-wise |
| `replies`, `echoes` | a turn's reply with its outbox parts; settled turns; replaced history; echoes |
| `sessions` | reading sessions (and a turn's hot state) |
| `session_life` | start, update, pause/resume, end, erase; a contact's new number |
| `messages` | reading messages; reactions, edits, revokes |
| `events` | the event log |
| `agents`, `credentials` | agent rows; API keys and browser tokens |
| `outbox`, `pricing` | outbound delivery and receipts; per-message pricing |
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.events import Event
from gateway.store.agents import AgentsRepo
from gateway.store.credentials import CredentialsRepo
from gateway.store.echoes import EchoesRepo
from gateway.store.events import EventsRepo
from gateway.store.ingest import IngestRepo, _IngestGroup
from gateway.store.messages import MessagesRepo
from gateway.store.outbox import OutboxQueries
from gateway.store.pricing import PricingQueries
from gateway.store.records import Ingested, LimitCandidate, NewMessage, SessionQuery
from gateway.store.replies import RepliesRepo, ReplyGroup
from gateway.store.session_life import SessionLifeRepo
from gateway.store.sessions import SessionsRepo

__all__ = ["Ingested", "LimitCandidate", "NewMessage", "SessionQuery", "Store"]


class Store(
    IngestRepo,
    RepliesRepo,
    EchoesRepo,
    SessionsRepo,
    SessionLifeRepo,
    MessagesRepo,
    EventsRepo,
    AgentsRepo,
    CredentialsRepo,
):
    def __init__(self, engine: AsyncEngine, on_commit: Callable[[list[Event]], None] | None = None) -> None:
        super().__init__(engine, on_commit)
        self._ingest = _IngestGroup(self)
        self._replies = ReplyGroup(self)
        self.outbox = OutboxQueries(self)
        self.pricing = PricingQueries(self)
