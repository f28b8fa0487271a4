"""Echoes: a message the business sent from its own app (WhatsApp coexistence), stored
as a person's message in the contact's conversation with the agent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import ContactRef, Event, now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    MessageRow,
    SessionRow,
)
from gateway.store.records import (
    SessionRecord,
)
from gateway.store.rows import (
    _contact_of,
    _session,
)
from gateway.types import EventType, SessionStatus


class EchoesRepo(StoreCore):
    async def record_echo(
        self,
        *,
        agent_id: str,
        contact: ContactRef,
        endpoint: str | None,
        provider_message_id: str,
        text: str,
        parts: Sequence[Any],
        author: str,
        meta: dict[str, Any],
    ) -> tuple[SessionRecord, str | None, list[Event]]:
        """A message the business sent outside the gateway (a coexistence echo), stored as a
        human message in the contact's active session with the agent (or a new one).

        Idempotent by the provider's id: a redelivery returns (session, None, [])."""
        now = now_ms()

        async def job(s: AsyncSession) -> tuple[SessionRecord, str | None, list[Event]]:
            dup = await s.scalar(
                select(MessageRow.session_id).where(
                    MessageRow.channel == str(contact.channel),
                    MessageRow.provider_message_id == provider_message_id,
                )
            )
            if dup is not None:
                srow = await s.get_one(SessionRow, dup)
                return _session(srow, await _contact_of(s, srow)), None, []
            crow = await self._contact(s, contact, agent_id)
            events: list[Event] = []
            srow_opt = await s.scalar(
                select(SessionRow)
                .where(
                    SessionRow.agent_id == agent_id,
                    SessionRow.contact_id == crow.id,
                    SessionRow.channel == str(contact.channel),
                    SessionRow.status == SessionStatus.ACTIVE,
                )
                .order_by(SessionRow.started_at.desc())
                .limit(1)
            )
            if srow_opt is None:
                srow, started = await self._new_session(
                    s,
                    agent_id=agent_id,
                    channel=contact.channel,
                    contact=crow,
                    direction="outbound",
                    meta={},
                    session_id=None,
                    now=now,
                    endpoint=endpoint,
                )
                events.append(started)
            else:
                srow = srow_opt
            mrow = MessageRow(
                id=ids.message_id(),
                session_id=srow.id,
                channel=str(contact.channel),
                role="assistant",
                source="human",
                type="text",
                text=text,
                parts=list(parts),
                provider_message_id=provider_message_id,
                status="sent",
                error=None,
                in_reply_to=None,
                pending=False,
                author=author,
                meta=meta,
                created_at=now,
            )
            s.add(mrow)
            srow.last_message_at = now
            srow.version = (srow.version or 0) + 1
            self._touched(s, [srow.id])
            await s.flush()
            data: dict[str, Any] = {
                "messageId": mrow.id,
                "text": text,
                "source": "human",
                "author": author,
                "providerMessageId": provider_message_id,
                "echo": True,
            }
            events.append(
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=agent_id,
                    session_id=srow.id,
                    channel=str(contact.channel),
                    ts=now,
                    data=data,
                )
            )
            events = await self._append(s, events)
            return _session(srow, crow), mrow.id, events

        return await self._writer.run(job)
