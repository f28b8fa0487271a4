"""What a turn or a person answers: the reply with its outbox parts (merged at the
writer with every other queued reply), a settled turn, a replaced history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import Event, now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    MessageRow,
    OutboxRow,
    SessionRow,
)
from gateway.store.outbox import OutboxPart
from gateway.store.records import (
    MessageRecord,
    NewMessage,
)
from gateway.store.rows import (
    _chunks,
    _message_from,
    _reply_row,
)
from gateway.store.writer import after_commit
from gateway.turn_lease import TurnSuperseded


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """One `record_reply`: an item of the writer's reply group."""

    session_id: str
    answered: Sequence[str]
    messages: Sequence[NewMessage]
    events: Sequence[Event]
    outbox: Sequence[OutboxPart]
    now: int


class ReplyGroup:
    """Every reply queued at the writer, stored together: a batch of N replies costs the
    statements of one (150 concurrent LLM streams finish in bursts)."""

    def __init__(self, store: RepliesRepo) -> None:
        self._store = store

    async def run_many(self, s: AsyncSession, items: Sequence[Reply]) -> list[list[Event]]:
        return await self._store._record_replies(s, items)


class RepliesRepo(StoreCore):
    _replies: ReplyGroup

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
        Merged at the writer with every other queued reply (`_record_replies`)."""
        item = Reply(
            session_id=session_id,
            answered=list(answered),
            messages=list(messages),
            events=list(events),
            outbox=list(outbox),
            now=now_ms(),
        )
        (stored,) = await self._writer.run_grouped(self._replies, [item])
        return stored

    async def _record_replies(self, s: AsyncSession, items: Sequence[Reply]) -> list[list[Event]]:
        """Core statements, no ORM, for all replies at once: the sessions' `version + 1 …
        RETURNING` (which also tells each one's channel and agent), one multi-row INSERT per
        table, one UPDATE of the answered messages, the events."""
        sids = [it.session_id for it in items]
        if len(set(sids)) < len(sids):  # two writes of one session (rare): one after the other
            return [(await self._record_replies(s, [it]))[0] for it in items]
        with_messages = [it.session_id for it in items if it.messages]
        now = max(it.now for it in items)
        found = {
            str(r[0]): r
            for r in await s.execute(
                update(SessionRow)
                .where(SessionRow.id.in_(sids))
                .values(
                    version=SessionRow.version + 1,
                    last_message_at=case(
                        (SessionRow.id.in_(with_messages), now), else_=SessionRow.last_message_at
                    ),
                )
                .returning(
                    SessionRow.id,
                    SessionRow.version,
                    SessionRow.channel,
                    SessionRow.agent_id,
                    SessionRow.endpoint,
                )
            )
        }
        missing = [sid for sid in with_messages if sid not in found]
        if missing:
            raise NoResultFound(f"no session {missing[0]!r}")
        rows: list[dict[str, Any]] = []
        queued: list[dict[str, Any]] = []
        answered: list[str] = []
        events: list[Event] = []
        for it in items:
            answered += it.answered
            events += it.events
            if it.session_id not in found:
                continue
            _, version, channel, agent_id, endpoint = found[it.session_id]
            mine = [
                _reply_row(
                    m,
                    it.session_id,
                    str(channel),
                    it.now + i,
                    queued=bool(it.outbox) and i == len(it.messages) - 1,
                )
                for i, m in enumerate(it.messages)
            ]
            rows += mine
            parts = self.outbox.queued_rows(
                channel=str(channel),
                agent_id=str(agent_id),
                session_id=it.session_id,
                message_id=it.messages[-1].id if it.messages else "",
                parts=it.outbox if it.messages else (),
                now=it.now,
            )
            queued += parts
            self._hot_replied(s, it, int(version), [_message_from(r) for r in mine])
            if parts:
                self.outbox.after_queued(s, parts, endpoint)
        if rows:
            await s.execute(insert(MessageRow), rows)
        if queued:
            await s.execute(insert(OutboxRow), queued)
        if self.fence_replies:
            # Several instances: only messages still pending are answered; a reply whose
            # messages another instance answered meanwhile rolls back (its turn outlived its
            # lease). The writer then reruns the other jobs of the batch without it.
            settled: set[str] = set()
            for chunk in _chunks(answered):
                settled.update(
                    await s.scalars(
                        update(MessageRow)
                        .where(MessageRow.id.in_(chunk), MessageRow.pending.is_(True))
                        .values(pending=False)
                        .returning(MessageRow.id)
                    )
                )
            for it in items:
                if not set(it.answered) <= settled:
                    raise TurnSuperseded(it.session_id)
        else:
            for chunk in _chunks(answered):
                await s.execute(update(MessageRow).where(MessageRow.id.in_(chunk)).values(pending=False))
        stored = await self._append(s, events)
        out: list[list[Event]] = []
        at = 0
        for it in items:
            out.append(stored[at : at + len(it.events)])
            at += len(it.events)
        return out

    def _hot_replied(self, s: AsyncSession, it: Reply, version: int, added: list[MessageRecord]) -> None:
        after_commit(
            s,
            lambda: self.hot.replied(
                it.session_id,
                version - 1,
                version,
                added=added,
                answered=it.answered,
                last_message_at=it.now if it.messages else None,
            ),
        )

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
