"""A session's life: start, update, pause and resume, end, erase; a contact's new number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import ContactRef, Event, now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    AgentRow,
    ContactRow,
    EventRow,
    MessageRow,
    SessionRow,
)
from gateway.store.records import (
    SessionRecord,
)
from gateway.store.rows import (
    _contact_of,
    _session,
    _tenant_of,
)
from gateway.store.writer import after_commit
from gateway.types import Channel, EventType, SessionStatus


class SessionLifeRepo(StoreCore):
    async def start_session(
        self,
        *,
        agent_id: str,
        channel: Channel,
        contact: ContactRef | None = None,
        direction: str = "inbound",
        meta: dict[str, Any] | None = None,
        endpoint: str | None = None,
        session_id: str | None = None,
    ) -> tuple[SessionRecord, list[Event]]:
        now = now_ms()

        async def job(s: AsyncSession) -> tuple[SessionRecord, list[Event]]:
            crow = await self._contact(s, contact, agent_id) if contact else None
            row, started = await self._new_session(
                s,
                agent_id=agent_id,
                channel=channel,
                contact=crow,
                direction=direction,
                meta=meta or {},
                session_id=session_id,
                now=now,
                endpoint=endpoint,
            )
            events = await self._append(s, [started])
            return _session(row, crow), events

        return await self._writer.run(job)

    async def update_session(self, session_id: str, **values: Any) -> SessionRecord | None:
        allowed = {"context", "prompt_vars", "prompt", "meta", "paused", "endpoint"}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")

        async def job(s: AsyncSession) -> SessionRecord | None:
            row = await s.get(SessionRow, session_id)
            if row is None:
                return None
            for key, value in values.items():
                setattr(row, key, value)
            row.version += 1
            self._touched(s, [row.id])
            await s.flush()
            return _session(row, await _contact_of(s, row))

        return await self._writer.run(job)

    async def set_paused(
        self,
        agent_id: str,
        paused: bool,
        *,
        session_id: str | None = None,
        contact: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[Event]]:
        """Pause or resume one session, every session of a contact with the agent, or the agent.

        Pause state is data: sessions that start later inherit a contact- or agent-level
        pause (see `_new_session`). Resuming the whole agent clears every level. Pausing
        settles the unanswered messages of the sessions it covers: a human answers them.
        Returns the sessions whose state changed and the event (none when nothing changed).
        """

        async def job(s: AsyncSession) -> tuple[list[str], list[Event]]:
            q = select(SessionRow).where(
                SessionRow.agent_id == agent_id, SessionRow.status == SessionStatus.ACTIVE
            )
            data: dict[str, Any] = dict(extra or {})
            changed_level = False
            if session_id is not None:
                q = q.where(SessionRow.id == session_id)
                data["sessionId"] = session_id
            elif contact is not None:
                rows = (
                    await s.scalars(
                        select(ContactRow).where(
                            ContactRow.tenant == await _tenant_of(s, agent_id),
                            or_(ContactRow.id == contact, ContactRow.address == contact),
                        )
                    )
                ).all()
                addresses = {c.address for c in rows} or {contact}
                agent = await s.get_one(AgentRow, agent_id)
                before = set(agent.paused_contacts or [])
                after = before | addresses if paused else before - addresses
                if after != before:
                    agent.paused_contacts, changed_level = sorted(after), True
                q = q.where(SessionRow.contact_id.in_([c.id for c in rows]))
                data["contact"] = contact
            else:
                agent = await s.get_one(AgentRow, agent_id)
                if agent.paused != paused:
                    agent.paused, changed_level = paused, True
                if not paused and agent.paused_contacts:  # a global resume clears every level
                    agent.paused_contacts, changed_level = [], True
            sessions = [r for r in (await s.scalars(q)).all() if r.paused != paused]
            for row in sessions:
                row.paused, row.version = paused, row.version + 1
            self._touched(s, [r.id for r in sessions])
            ids_ = [r.id for r in sessions]
            if paused and ids_:
                await s.execute(
                    update(MessageRow)
                    .where(MessageRow.session_id.in_(ids_), MessageRow.pending.is_(True))
                    .values(pending=False)
                )
            if not ids_ and not changed_level:
                return [], []
            kind = EventType.SESSION_PAUSED if paused else EventType.SESSION_RESUMED
            channel = sessions[0].channel if session_id is not None and sessions else None
            events = await self._append(
                s,
                [
                    Event(
                        type=kind,
                        agent=agent_id,
                        session_id=session_id,
                        channel=channel,
                        data={**data, "sessions": ids_},
                    )
                ],
            )
            return ids_, events

        return await self._writer.run(job)

    async def end_session(
        self,
        session_id: str,
        reason: str,
        extra: dict[str, Any] | None = None,
        before: Sequence[Event] = (),
    ) -> tuple[SessionRecord | None, list[Event]]:
        """End an active session (idempotent: an ended session yields no event).

        `extra` adds fields to the `session.ended` event (e.g. a call's own duration);
        `before` are events stored with it, ahead of it (e.g. `session.timeout`).
        """
        now = now_ms()

        async def job(s: AsyncSession) -> tuple[SessionRecord | None, list[Event]]:
            # FOR UPDATE: two processes ending one session (a sweep, an API call) queue
            # here, and the second sees it ended: one `session.ended`, never two.
            row = await s.get(SessionRow, session_id, with_for_update=True)
            if row is None:
                return None, []
            if row.status != SessionStatus.ACTIVE:
                return _session(row, await _contact_of(s, row)), []
            row.status, row.ended_at, row.end_reason = SessionStatus.ENDED, now, reason
            row.version += 1
            self._touched(s, [row.id])
            await s.execute(
                update(MessageRow).where(MessageRow.session_id == session_id).values(pending=False)
            )
            count = await s.scalar(select(func.count()).where(MessageRow.session_id == session_id)) or 0
            ev = Event(
                type=EventType.SESSION_ENDED,
                agent=row.agent_id,
                session_id=row.id,
                channel=row.channel,
                ts=now,
                data={
                    "reason": reason,
                    "duration": round((now - row.started_at) / 1000, 3),
                    "messageCount": int(count),
                    **(extra or {}),
                },
            )
            events = await self._append(s, [*before, ev])
            return _session(row, await _contact_of(s, row)), events

        return await self._writer.run(job)

    async def erase_session(
        self, session_id: str, *, by: str | None = None
    ) -> tuple[SessionRecord | None, list[Event]]:
        """Erase a session's content (messages, events, context) and leave a tombstone."""
        now = now_ms()

        async def job(s: AsyncSession) -> tuple[SessionRecord | None, list[Event]]:
            row = await s.get(SessionRow, session_id)
            if row is None:
                return None, []
            await s.execute(delete(MessageRow).where(MessageRow.session_id == session_id))
            await s.execute(delete(EventRow).where(EventRow.session_id == session_id))
            was_active = row.status == SessionStatus.ACTIVE
            row.version += 1
            after_commit(s, self.hot.clear)  # an erased conversation never comes back from memory
            row.status, row.end_reason = SessionStatus.ENDED, "erased"
            row.ended_at = row.ended_at or now
            row.context, row.prompt_vars, row.prompt = {}, {}, None
            row.meta = {"erased": True, "erasedAt": now, **({"erasedBy": by} if by else {})}
            ev = Event(
                type=EventType.SESSION_ENDED,
                agent=row.agent_id,
                session_id=row.id,
                channel=row.channel,
                ts=now,
                data={
                    "reason": "erased",
                    "duration": round((now - row.started_at) / 1000, 3),
                    "messageCount": 0,
                    "wasActive": was_active,
                    **({"by": by} if by else {}),
                },
            )
            events = await self._append(s, [ev])
            return _session(row, await _contact_of(s, row)), events

        return await self._writer.run(job)

    async def rekey_contact(self, *, channel: str, old: str, new: str) -> bool:
        """A user changed number: the contact keeps its history under the new address."""

        async def job(s: AsyncSession) -> bool:
            rows = (
                await s.scalars(
                    select(ContactRow).where(ContactRow.channel == channel, ContactRow.address == old)
                )
            ).all()
            moved = False
            for row in rows:  # one row per tenant that knows the contact
                clash = await s.scalar(
                    select(ContactRow).where(
                        ContactRow.tenant == row.tenant,
                        ContactRow.channel == channel,
                        ContactRow.address == new,
                    )
                )
                if clash is None:
                    row.address, moved = new, True
                    await s.execute(
                        update(SessionRow)
                        .where(SessionRow.contact_id == row.id)
                        .values(version=SessionRow.version + 1)
                    )
                    after_commit(s, self.hot.clear)  # the contact's sessions carry its address
            return moved

        return await self._writer.run(job)
