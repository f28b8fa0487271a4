"""SQLAlchemy 2 typed models: the conversation model as tables.

Every time is epoch milliseconds (BIGINT): the same on SQLite and PostgreSQL, no
time-zone round-trip surprises, and the same unit as the events' `ts`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names so migrations are reproducible on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER on SQLite (so it aliases the rowid and autoincrements).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, int: BigInteger}


class AgentRow(Base):
    """An agent: from gateway.toml or declared by an agent process."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    origin: Mapped[str] = mapped_column(String(16))  # "config" | "process"
    # The owning tenant (None: the operator). Fixed once the agent exists: everything of
    # the agent (contacts, sessions, messages, events) belongs to this tenant.
    tenant: Mapped[str | None] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]]
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # Contact-level takeover: addresses paused with this agent, including contacts not seen yet.
    paused_contacts: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[int]
    updated_at: Mapped[int]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str | None] = mapped_column(String(64))
    agents: Mapped[list[Any] | None] = mapped_column(JSON)  # narrowed to these agent ids
    read_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[int]
    revoked_at: Mapped[int | None]
    last_used_at: Mapped[int | None]


class BrowserTokenRow(Base):
    """A short-lived single-use token (PROTOCOL §4). Only its hash is stored."""

    __tablename__ = "browser_tokens"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    session_id: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]]
    expires_at: Mapped[int] = mapped_column(index=True)
    used_at: Mapped[int | None]


class ContactRow(Base):
    """A person on a channel, as one tenant knows them: tenants never share a contact row
    (a name given through one tenant's API is never shown to another)."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("tenant", "channel", "address"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="", server_default="")  # "": the operator
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(256))
    paused_agents: Mapped[list[Any]]  # agent ids that paused this contact (takeover)
    created_at: Mapped[int]


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_agent_contact_status", "agent_id", "contact_id", "status"),
        Index("ix_sessions_started_at_id", "started_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    contact_id: Mapped[str | None] = mapped_column(ForeignKey("contacts.id"))
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    status: Mapped[str] = mapped_column(String(16), default="active")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]]
    context: Mapped[dict[str, Any]]  # UI context (chat `context` frames) and run-time context
    prompt_vars: Mapped[dict[str, Any]]
    prompt: Mapped[str | None] = mapped_column(Text)  # per-session prompt override
    started_at: Mapped[int]
    last_message_at: Mapped[int]
    last_inbound_at: Mapped[int | None]
    ended_at: Mapped[int | None]
    end_reason: Mapped[str | None] = mapped_column(String(32))
    # WhatsApp: the customer-service window closed early (a 131047 / 63016 failure).
    window_closed_at: Mapped[int | None]
    # The channel address of the business side (a WhatsApp phone_number_id, a Twilio number).
    endpoint: Mapped[str | None] = mapped_column(String(128), index=True)  # a call is found by CallSid
    # Bumped by every write to the session or its messages (gateway/store/hot.py).
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "provider_message_id"),
        Index("ix_messages_session_created", "session_id", "created_at"),
        Index("ix_messages_pending", "pending"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="agent")
    type: Mapped[str] = mapped_column(String(24), default="text")
    text: Mapped[str] = mapped_column(Text, default="")
    parts: Mapped[list[Any]]
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    in_reply_to: Mapped[str | None] = mapped_column(String(40))
    # A user message waits for its turn while pending; the turn's reply clears it in
    # the same transaction, so a crash mid-turn leaves it pending and it is re-run.
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    author: Mapped[str | None] = mapped_column(String(128))  # operator identity for human messages
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # reactions, edits, revokes, provider extras
    created_at: Mapped[int]


class EventRow(Base):
    """The append-only event log; `seq` is commit-ordered."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_agent_seq", "agent_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    ts: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(40))
    agent_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64), index=True)
    channel: Mapped[str | None] = mapped_column(String(16))
    data: Mapped[dict[str, Any]]


class OutboxRow(Base):
    """One provider send (one part of a reply), delivered with retries, at most once.

    `pending` → `sending` (claimed, committed before the HTTP call) → `sent`, or
    back to `pending` with a later `next_attempt_at`, or `failed`. A row found in
    `sending` after a crash is `uncertain`: it is never sent again blindly (that
    could send twice); a status webhook that echoes its key settles it, otherwise it
    fails with a clear error.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    message_id: Mapped[str] = mapped_column(String(40), index=True)
    part: Mapped[int] = mapped_column(Integer, default=0)
    parts: Mapped[int] = mapped_column(Integer, default=1)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int]
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    delivery: Mapped[str | None] = mapped_column(String(16))  # sent/delivered/read/played/failed
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # WhatsApp per-message pricing from the statuses: the category and type to count by,
    # whether Meta charges for it, and every field Meta sent (with `conversation`).
    pricing_category: Mapped[str | None] = mapped_column(String(48))
    pricing_type: Mapped[str | None] = mapped_column(String(48))
    pricing_billable: Mapped[bool | None] = mapped_column(Boolean)
    pricing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int]
    updated_at: Mapped[int]
    # Several instances: the instance whose send is in flight (gateway/turn_lease.py names
    # it); a `sending` part of an instance that is no longer alive becomes `uncertain`.
    claimed_by: Mapped[str | None] = mapped_column(String(64))


# PostgreSQL's clock in epoch milliseconds: what every instance compares leases against.
DB_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"


class TurnLeaseRow(Base):
    """Which gateway process runs a session's turns now (several instances, PostgreSQL).

    Held by `owner` until `expires_at` (epoch ms on the database's clock), renewed while
    it runs; `dirty` says another process committed a message for the session meanwhile,
    so the owner runs one more turn before it lets go (gateway/turn_lease.py)."""

    __tablename__ = "turn_leases"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[int] = mapped_column(BigInteger)
    dirty: Mapped[bool] = mapped_column(Boolean, default=False)
