"""Reading sessions: one, a page of them, the ones a limit or a restart concerns, a turn's state."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select

from gateway.store.core import StoreCore
from gateway.store.models import (
    ContactRow,
    MessageRow,
    SessionRow,
)
from gateway.store.records import (
    LimitCandidate,
    MessageRecord,
    SessionQuery,
    SessionRecord,
)
from gateway.store.rows import (
    _contact_of,
    _message,
    _session,
)
from gateway.types import SessionStatus


class SessionsRepo(StoreCore):
    async def turn_state(self, session_id: str) -> tuple[SessionRecord, list[MessageRecord]] | None:
        """The session and its messages, for a turn: from the hot state, or read once."""
        entry = self.hot.get(session_id)
        if entry is not None:
            return entry.session, list(entry.messages)
        async with self._read() as s:
            found = (
                await s.execute(
                    select(SessionRow, ContactRow)
                    .outerjoin(ContactRow, SessionRow.contact_id == ContactRow.id)
                    .where(SessionRow.id == session_id)
                )
            ).first()
            if found is None:
                return None
            rows = await s.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id)
                .order_by(MessageRow.created_at, MessageRow.id)
            )
            messages = [_message(r) for r in rows]
        session = _session(found[0], found[1])
        if self.hot.get(session_id) is None:  # a write that committed meanwhile already filled it
            self.hot.put(session, messages, found[0].version)
        return session, messages

    async def session(self, session_id: str) -> SessionRecord | None:
        async with self._read() as s:
            # One statement, not two: every turn and most routes read a session.
            found = (
                await s.execute(
                    select(SessionRow, ContactRow)
                    .outerjoin(ContactRow, SessionRow.contact_id == ContactRow.id)
                    .where(SessionRow.id == session_id)
                )
            ).first()
            return None if found is None else _session(found[0], found[1])

    async def session_by_endpoint(self, endpoint: str) -> SessionRecord | None:
        """The latest session bound to a provider endpoint (e.g. a phone call's `twilio-voice:<CallSid>`)."""
        async with self._read() as s:
            row = await s.scalar(
                select(SessionRow)
                .where(SessionRow.endpoint == endpoint)
                .order_by(SessionRow.started_at.desc())
                .limit(1)
            )
            return None if row is None else _session(row, await _contact_of(s, row))

    async def sessions(self, q: SessionQuery) -> list[SessionRecord]:
        stmt = select(SessionRow, ContactRow).outerjoin(ContactRow, SessionRow.contact_id == ContactRow.id)
        if q.agent is not None:
            stmt = stmt.where(SessionRow.agent_id == q.agent)
        if q.agents is not None:
            stmt = stmt.where(SessionRow.agent_id.in_(list(q.agents)))
        if q.contact is not None:
            stmt = stmt.where(or_(ContactRow.id == q.contact, ContactRow.address == q.contact))
        if q.channel is not None:
            stmt = stmt.where(SessionRow.channel == q.channel)
        if q.status is not None:
            stmt = stmt.where(SessionRow.status == q.status)
        if q.paused is not None:
            stmt = stmt.where(SessionRow.paused.is_(q.paused))
        if q.since is not None:
            stmt = stmt.where(SessionRow.started_at >= q.since)
        if q.until is not None:
            stmt = stmt.where(SessionRow.started_at < q.until)
        if q.cursor is not None:
            at, sid = q.cursor
            stmt = stmt.where(
                or_(SessionRow.started_at < at, and_(SessionRow.started_at == at, SessionRow.id < sid))
            )
        stmt = stmt.order_by(SessionRow.started_at.desc(), SessionRow.id.desc()).limit(q.limit)
        async with self._read() as s:
            rows = (await s.execute(stmt)).all()
        return [_session(srow, crow) for srow, crow in rows]

    async def count_sessions(self, *, agent: str | None = None) -> int:
        q = select(func.count()).select_from(SessionRow)
        if agent is not None:
            q = q.where(SessionRow.agent_id == agent)
        async with self._read() as s:
            return int(await s.scalar(q) or 0)

    async def pending_sessions(
        self, *, exclude_channels: Sequence[str] = (), agent_id: str | None = None
    ) -> list[str]:
        """Active sessions with user messages still waiting for their turn (restart recovery)."""
        async with self._read() as s:
            q = (
                select(MessageRow.session_id)
                .join(SessionRow, SessionRow.id == MessageRow.session_id)
                .where(MessageRow.pending.is_(True), SessionRow.status == SessionStatus.ACTIVE)
            )
            if exclude_channels:
                q = q.where(SessionRow.channel.not_in(list(exclude_channels)))
            if agent_id is not None:
                q = q.where(SessionRow.agent_id == agent_id)
            rows = await s.scalars(q.distinct())
            return list(rows)

    async def limit_candidates(
        self,
        *,
        agent_id: str,
        idle_warn_before: int | None,
        started_before: int | None,
        window_before: int,
    ) -> list[LimitCandidate]:
        """Active sessions of an agent (calls aside) that a limit may concern now: the user
        silent since before `idle_warn_before`, started before `started_before`, or (WhatsApp)
        last heard from before `window_before`. Oldest idle first."""
        basis = func.coalesce(SessionRow.last_inbound_at, SessionRow.started_at)
        due = [and_(SessionRow.channel == "whatsapp", SessionRow.last_inbound_at < window_before)]
        if idle_warn_before is not None:
            due.append(basis < idle_warn_before)
        if started_before is not None:
            due.append(SessionRow.started_at < started_before)
        async with self._read() as s:
            rows = (
                await s.execute(
                    select(
                        SessionRow.id,
                        SessionRow.channel,
                        SessionRow.started_at,
                        SessionRow.last_inbound_at,
                    )
                    .where(
                        SessionRow.agent_id == agent_id,
                        SessionRow.status == SessionStatus.ACTIVE,
                        SessionRow.channel != "phone",
                        or_(*due),
                    )
                    .order_by(basis)
                    .limit(500)
                )
            ).all()
        return [
            LimitCandidate(id=sid, agent_id=agent_id, channel=ch, started_at=at, last_inbound_at=last)
            for sid, ch, at, last in rows
        ]

    async def stale_calls(self, *, agent_id: str, started_before: int) -> list[str]:
        """Active phone sessions of an agent started before a time (calls nobody closed)."""
        async with self._read() as s:
            rows = await s.scalars(
                select(SessionRow.id)
                .where(
                    SessionRow.agent_id == agent_id,
                    SessionRow.status == SessionStatus.ACTIVE,
                    SessionRow.channel == "phone",
                    SessionRow.started_at < started_before,
                )
                .limit(500)
            )
            return list(rows)
