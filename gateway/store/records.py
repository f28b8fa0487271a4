"""Plain frozen records the store hands out: callers never see ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.events import Event


@dataclass(frozen=True, kw_only=True, slots=True)
class ContactRecord:
    id: str
    channel: str
    address: str
    name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionRecord:
    id: str
    agent_id: str
    channel: str
    contact: ContactRecord | None
    direction: str
    status: str
    paused: bool
    meta: dict[str, Any]
    context: dict[str, Any]
    prompt_vars: dict[str, Any]
    prompt: str | None
    started_at: int
    last_message_at: int
    last_inbound_at: int | None
    ended_at: int | None
    end_reason: str | None
    window_closed_at: int | None = None
    endpoint: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageRecord:
    id: str
    session_id: str
    channel: str
    role: str
    source: str
    type: str
    text: str
    parts: list[Any] = field(default_factory=list)
    provider_message_id: str | None = None
    status: str | None = None
    error: dict[str, Any] | None = None
    in_reply_to: str | None = None
    pending: bool = False
    author: str | None = None
    meta: dict[str, Any] | None = None
    created_at: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    tenant: str | None
    created_at: int
    revoked_at: int | None
    agents: list[str] | None = None
    read_only: bool = False
    admin: bool = False
    last_used_at: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenRecord:
    agent_id: str
    channel: str
    session_id: str | None
    meta: dict[str, Any]
    expires_at: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxItem:
    """One provider send as the outbox hands it to a channel's sender."""

    id: str
    idempotency_key: str
    channel: str
    agent_id: str
    session_id: str
    message_id: str
    part: int
    parts: int
    payload: dict[str, Any]
    attempts: int
    endpoint: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ingested:
    """What `ingest_message` did."""

    session: SessionRecord
    message: MessageRecord | None  # None when the message was a duplicate
    events: list[Event] = field(default_factory=list)
    duplicate: bool = False
    started: bool = False
    ended: bool = False  # `active_only` and the session had ended: nothing stored


@dataclass(frozen=True, kw_only=True, slots=True)
class NewMessage:
    """A message the turn runner records with a reply (assistant text, tool calls, tool results)."""

    id: str
    role: str
    text: str = ""
    source: str = "agent"
    parts: list[Any] = field(default_factory=list)
    in_reply_to: str | None = None
    author: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitCandidate:
    """An active session past one of its limits' thresholds (see `gateway.limits`)."""

    id: str
    agent_id: str
    channel: str
    started_at: int
    last_inbound_at: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionQuery:
    agent: str | None = None
    agents: frozenset[str] | None = None  # visibility scope (tenants); None = all
    contact: str | None = None  # contact id or address
    channel: str | None = None
    status: str | None = None
    paused: bool | None = None
    since: int | None = None
    until: int | None = None
    limit: int = 50
    cursor: tuple[int, str] | None = None  # (started_at, id) of the last row seen
