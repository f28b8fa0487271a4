"""Messages: a conversation, a returning contact's earlier ones, and notes on one
(reactions, edits, revokes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import Event
from gateway.store.core import StoreCore
from gateway.store.models import (
    MessageRow,
    OutboxRow,
    SessionRow,
)
from gateway.store.records import (
    MessageRecord,
)
from gateway.store.rows import (
    _message,
)


class MessagesRepo(StoreCore):
    async def messages(self, session_id: str) -> list[MessageRecord]:
        async with self._read() as s:
            rows = await s.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id)
                .order_by(MessageRow.created_at, MessageRow.id)
            )
            return [_message(r) for r in rows]

    async def last_messages(self, session_ids: Sequence[str]) -> dict[str, MessageRecord]:
        """The newest user or assistant message of each session (one query for a page of them)."""
        if not session_ids:
            return {}
        newest = (
            select(MessageRow.session_id, func.max(MessageRow.created_at).label("at"))
            .where(MessageRow.session_id.in_(list(session_ids)), MessageRow.role.in_(("user", "assistant")))
            .group_by(MessageRow.session_id)
            .subquery()
        )
        async with self._read() as s:
            rows = await s.scalars(
                select(MessageRow)
                .join(
                    newest,
                    and_(MessageRow.session_id == newest.c.session_id, MessageRow.created_at == newest.c.at),
                )
                .where(MessageRow.role.in_(("user", "assistant")))
                .order_by(MessageRow.id)
            )
            return {r.session_id: _message(r) for r in rows}  # a tie: the later id wins

    async def previous_messages(
        self, *, agent_id: str, contact_id: str, before_session: str, conversations: int, limit: int
    ) -> list[MessageRecord]:
        """A returning contact's last conversations with the agent (user/assistant text), oldest first."""
        if conversations <= 0 or limit <= 0:
            return []
        async with self._read() as s:
            sids = list(
                await s.scalars(
                    select(SessionRow.id)
                    .where(
                        SessionRow.agent_id == agent_id,
                        SessionRow.contact_id == contact_id,
                        SessionRow.id != before_session,
                        SessionRow.end_reason.is_distinct_from("erased"),
                    )
                    .order_by(SessionRow.started_at.desc())
                    .limit(conversations)
                )
            )
            if not sids:
                return []
            rows = (
                await s.scalars(
                    select(MessageRow)
                    .where(
                        MessageRow.session_id.in_(sids),
                        MessageRow.role.in_(("user", "assistant")),
                        MessageRow.text != "",
                    )
                    .order_by(MessageRow.created_at.desc(), MessageRow.id.desc())
                    .limit(limit)
                )
            ).all()
        return [_message(r) for r in reversed(rows)]

    async def _by_provider_id(
        self, s: AsyncSession, channel: str, provider_message_id: str
    ) -> MessageRow | None:
        """A message by the provider's id: a user's message, or (through the outbox) one we sent."""
        row = await s.scalar(
            select(MessageRow).where(
                MessageRow.channel == channel, MessageRow.provider_message_id == provider_message_id
            )
        )
        if row is None:
            row = await s.scalar(
                select(MessageRow)
                .join(OutboxRow, OutboxRow.message_id == MessageRow.id)
                .where(OutboxRow.channel == channel, OutboxRow.provider_message_id == provider_message_id)
                .limit(1)
            )
        return row

    async def find_message(self, *, channel: str, provider_message_id: str) -> MessageRecord | None:
        async with self._read() as s:
            row = await self._by_provider_id(s, channel, provider_message_id)
            return None if row is None else _message(row)

    async def annotate_message(
        self, *, channel: str, provider_message_id: str, key: str, value: Any, events: Sequence[Event] = ()
    ) -> str | None:
        """Record something about an earlier message (a reaction, an edit): its id, or None.

        `value=None` removes the note (a reaction taken back)."""

        async def job(s: AsyncSession) -> str | None:
            row = await self._by_provider_id(s, channel, provider_message_id)
            if row is None:
                return None
            meta = dict(row.meta or {})
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
            row.meta = meta
            await self._bump(s, [row.session_id])
            await self._append(s, events)
            return row.id

        return await self._writer.run(job)

    async def hide_messages(
        self, message_ids: Sequence[str], *, meta: dict[str, Any], events: Sequence[Event] = ()
    ) -> list[Event]:
        """Take messages out of the conversation (a revoke, a reaction taken back).

        Their text and parts go; the row stays (with `hidden` and `meta`: who and when),
        so the transcript keeps its place and the agent never reads or answers it.
        """
        if not message_ids:
            return []

        async def job(s: AsyncSession) -> list[Event]:
            rows = (await s.scalars(select(MessageRow).where(MessageRow.id.in_(list(message_ids))))).all()
            for row in rows:
                row.text, row.parts, row.pending = "", [], False
                row.meta = {**(row.meta or {}), **meta, "hidden": True}
            await self._bump(s, [row.session_id for row in rows])
            return await self._append(s, events)

        return await self._writer.run(job)

    async def update_message(self, message_id: str, *, text: str, meta: dict[str, Any] | None = None) -> None:
        async def job(s: AsyncSession) -> None:
            row = await s.get_one(MessageRow, message_id)
            row.text = text
            if meta:
                row.meta = {**(row.meta or {}), **meta}
            await self._bump(s, [row.session_id])

        return await self._writer.run(job)
