"""Rows to records and back: the frozen records callers get, never ORM rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import Event
from gateway.store.models import (
    AgentRow,
    ApiKeyRow,
    ContactRow,
    EventRow,
    MessageRow,
    SessionRow,
)
from gateway.store.records import (
    ApiKeyRecord,
    ContactRecord,
    MessageRecord,
    NewMessage,
    SessionRecord,
)
from gateway.types import Channel, EventType, SessionStatus


def _session_row(
    *,
    agent_id: str,
    channel: Channel,
    contact: ContactRow | None,
    direction: str,
    meta: dict[str, Any],
    session_id: str | None,
    now: int,
    endpoint: str | None,
    paused: bool,
) -> tuple[SessionRow, Event]:
    """A new session's row and its `session.started` event (nothing written yet)."""
    row = SessionRow(
        id=session_id or ids.session_id(channel),
        agent_id=agent_id,
        channel=str(channel),
        contact_id=contact.id if contact else None,
        direction=direction,
        status=SessionStatus.ACTIVE,
        paused=paused,
        meta=meta,
        context={},
        prompt_vars={},
        prompt=None,
        started_at=now,
        last_message_at=now,
        last_inbound_at=None,
        endpoint=endpoint,
        window_closed_at=None,
        ended_at=None,
        end_reason=None,
        version=0,
    )
    contact_json = {"id": contact.address, "name": contact.name} if contact else None
    started = Event(
        type=EventType.SESSION_STARTED,
        agent=agent_id,
        session_id=row.id,
        channel=str(channel),
        ts=now,
        data={"contact": contact_json, "direction": direction, "metadata": meta},
    )
    return row, started


def _reply_row(m: NewMessage, session_id: str, channel: str, at: int, *, queued: bool) -> dict[str, Any]:
    return {
        "id": m.id,
        "session_id": session_id,
        "channel": channel,
        "role": m.role,
        "source": m.source,
        "type": "text",
        "text": m.text,
        "parts": list(m.parts),
        "provider_message_id": None,
        "status": "queued" if queued else None,
        "error": None,
        "in_reply_to": m.in_reply_to,
        "pending": False,
        "author": m.author,
        "meta": m.meta,
        "created_at": at,
    }


def _message_from(row: dict[str, Any]) -> MessageRecord:
    return MessageRecord(**{k: v for k, v in row.items() if k != "parts"}, parts=list(row["parts"]))


def _chunks(values: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """IN lists bounded (SQLite caps bound parameters; PostgreSQL plans them better small)."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def _paused_for(agent: AgentRow | None, contact: ContactRow | None) -> bool:
    """Agent- or contact-level pause (the session's own flag is checked by the caller)."""
    if agent is None:
        return False
    return agent.paused or bool(contact is not None and contact.address in (agent.paused_contacts or []))


async def _tenant_of(s: AsyncSession, agent_id: str) -> str:
    """The tenant an agent's contacts are filed under ("" for the operator's agents)."""
    agent = await s.get(AgentRow, agent_id)  # the identity map makes repeats free
    return (agent.tenant if agent is not None else None) or ""


async def _contact_of(s: AsyncSession, row: SessionRow) -> ContactRow | None:
    return None if row.contact_id is None else await s.get(ContactRow, row.contact_id)


def _event(r: EventRow) -> Event:
    return Event(
        type=r.type,
        agent=r.agent_id,
        ts=r.ts,
        session_id=r.session_id,
        channel=r.channel,
        data=r.data,
        seq=r.seq,
    )


def _key(r: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=r.id,
        name=r.name,
        prefix=r.prefix,
        tenant=r.tenant,
        created_at=r.created_at,
        revoked_at=r.revoked_at,
        agents=None if r.agents is None else [str(a) for a in r.agents],
        read_only=bool(r.read_only),
        admin=bool(r.admin),
        last_used_at=r.last_used_at,
    )


def _session(r: SessionRow, c: ContactRow | None) -> SessionRecord:
    contact = None if c is None else ContactRecord(id=c.id, channel=c.channel, address=c.address, name=c.name)
    return SessionRecord(
        id=r.id,
        agent_id=r.agent_id,
        channel=r.channel,
        contact=contact,
        direction=r.direction,
        status=r.status,
        paused=r.paused,
        meta=dict(r.meta),
        context=dict(r.context),
        prompt_vars=dict(r.prompt_vars),
        prompt=r.prompt,
        started_at=r.started_at,
        last_message_at=r.last_message_at,
        last_inbound_at=r.last_inbound_at,
        ended_at=r.ended_at,
        end_reason=r.end_reason,
        window_closed_at=r.window_closed_at,
        endpoint=r.endpoint,
    )


def _message(r: MessageRow) -> MessageRecord:
    return MessageRecord(
        id=r.id,
        session_id=r.session_id,
        channel=r.channel,
        role=r.role,
        source=r.source,
        type=r.type,
        text=r.text,
        parts=list(r.parts or []),
        provider_message_id=r.provider_message_id,
        status=r.status,
        error=r.error,
        in_reply_to=r.in_reply_to,
        pending=r.pending,
        author=r.author,
        meta=r.meta,
        created_at=r.created_at,
    )


_SESSION_COLUMNS = [c.key for c in SessionRow.__table__.columns]


def _values(row: SessionRow) -> dict[str, Any]:
    return {key: getattr(row, key) for key in _SESSION_COLUMNS}
