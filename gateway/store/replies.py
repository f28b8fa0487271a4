"""What a turn or a person answers: the reply with its outbox parts, a settled turn,
a replaced history, an echo (a message the business sent from its own app)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import ContactRef, Event, now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    MessageRow,
    OutboxRow,
    SessionRow,
)
from gateway.store.outbox import OutboxPart
from gateway.store.records import (
    NewMessage,
    SessionRecord,
)
from gateway.store.rows import (
    _contact_of,
    _message_from,
    _reply_row,
    _session,
)
from gateway.store.writer import after_commit
from gateway.types import EventType, SessionStatus


class RepliesRepo(StoreCore):
    async def record_reply(
        self,
        *,
        session_id: str,
        answered: Sequence[str],
        messages: Sequence[NewMessage],
        events: Sequence[Event],
        outbox: Sequence[OutboxPart] = (),
    ) -> list[Event]:
        """Store a finished turn: its messages, the answered user messages, its events,
        and (store-and-forward channels) the outbox parts that deliver the last message.

        Core statements, no ORM: the session's `version + 1 … RETURNING` (which also tells
        the channel and agent), one multi-row INSERT per table, one UPDATE of the answered
        messages, the events."""
        now = now_ms()

        async def job(s: AsyncSession) -> list[Event]:
            values: dict[str, Any] = {"version": SessionRow.version + 1}
            if messages:
                values["last_message_at"] = now
            found = (
                await s.execute(
                    update(SessionRow)
                    .where(SessionRow.id == session_id)
                    .values(**values)
                    .returning(
                        SessionRow.version, SessionRow.channel, SessionRow.agent_id, SessionRow.endpoint
                    )
                )
            ).first()
            if found is None:
                if messages:
                    raise NoResultFound(f"no session {session_id!r}")
                return await self._append(s, events)
            version, channel, agent_id, endpoint = int(found[0]), str(found[1]), str(found[2]), found[3]
            rows = [
                _reply_row(m, session_id, channel, now + i, queued=bool(outbox) and i == len(messages) - 1)
                for i, m in enumerate(messages)
            ]
            if rows:
                await s.execute(insert(MessageRow), rows)
            queued = self.outbox.queued_rows(
                channel=channel,
                agent_id=agent_id,
                session_id=session_id,
                message_id=messages[-1].id if messages else "",
                parts=outbox if messages else (),
                now=now,
            )
            if queued:
                await s.execute(insert(OutboxRow), queued)
            if answered:
                await s.execute(
                    update(MessageRow).where(MessageRow.id.in_(list(answered))).values(pending=False)
                )
            added = [_message_from(r) for r in rows]
            after_commit(
                s,
                lambda: self.hot.replied(
                    session_id,
                    version - 1,
                    version,
                    added=added,
                    answered=answered,
                    last_message_at=now if messages else None,
                ),
            )
            if queued:
                self.outbox.after_queued(s, queued, endpoint)
            return await self._append(s, events)

        return await self._writer.run(job)

    async def settle_pending(
        self, session_id: str, answered: Sequence[str], events: Sequence[Event]
    ) -> list[Event]:
        """Mark user messages as handled without a reply (e.g. the turn failed)."""
        return await self.record_reply(session_id=session_id, answered=answered, messages=(), events=events)

    async def replace_history(self, session_id: str, messages: Sequence[NewMessage]) -> bool:
        """Replace the answered history of a session (its unanswered messages stay)."""
        now = now_ms()

        async def job(s: AsyncSession) -> bool:
            row = await s.get(SessionRow, session_id)
            if row is None:
                return False
            row.version += 1
            self._touched(s, [row.id])
            await s.execute(
                delete(MessageRow).where(MessageRow.session_id == session_id, MessageRow.pending.is_(False))
            )
            # Older than anything still pending, so the order stays history → pending.
            oldest = await s.scalar(
                select(func.min(MessageRow.created_at)).where(
                    MessageRow.session_id == session_id, MessageRow.pending.is_(True)
                )
            )
            base = min(now, oldest if oldest is not None else now) - len(messages) - 1
            for i, m in enumerate(messages):
                s.add(
                    MessageRow(
                        id=m.id,
                        session_id=session_id,
                        channel=row.channel,
                        role=m.role,
                        source=m.source,
                        type="text",
                        text=m.text,
                        parts=list(m.parts),
                        provider_message_id=None,
                        status=None,
                        error=None,
                        in_reply_to=m.in_reply_to,
                        pending=False,
                        author=m.author,
                        created_at=base + i,
                    )
                )
            return True

        return await self._writer.run(job)

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
