"""Outbox and delivery-status queries (a part of the Store, kept in its own module).

Delivery status only moves forward: sent < delivered < read < played; `failed` is
final and keeps its error. Statuses for one provider message may arrive twice or
out of order; a status that would move backwards is ignored (and emits nothing).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, bindparam, case, exists, func, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import Event, now_ms
from gateway.store.models import DB_NOW_MS, MessageRow, OutboxRow, SessionRow, TurnLeaseRow
from gateway.store.records import OutboxItem
from gateway.store.writer import after_commit
from gateway.types import EventType

if TYPE_CHECKING:
    from gateway.store.sql import Store

RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}
FINAL = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxPart:
    payload: dict[str, Any]
    part: int
    parts: int  # 0 when not known yet (progressive sends)
    key: str | None = None  # idempotency key; default "<message id>:<part>"


def advances(current: str | None, new: str) -> bool:
    """Whether a delivery status may replace the current one."""
    if current == FINAL:
        return False
    if new == FINAL:
        return True
    if new not in RANK:
        return False
    return RANK[new] > RANK.get(current or "queued", 0) or current is None


# Parts of one session go out strictly in order: a part may be claimed only when no part
# of its session is in flight or uncertain, and none queued before it is still waiting.
# The claim is built once (Core, with bind parameters): built per call through the ORM, the
# statement cost ~0.6 ms of Python on every send before SQLite or PostgreSQL saw it.
_OUT = cast(Table, OutboxRow.__table__)
_E = _OUT.alias("earlier")
_BLOCKED = exists().where(
    _E.c.session_id == _OUT.c.session_id,
    _E.c.id != _OUT.c.id,
    or_(
        _E.c.status.in_(("sending", "uncertain")),
        and_(
            _E.c.status == "pending",
            or_(
                _E.c.created_at < _OUT.c.created_at,
                and_(_E.c.created_at == _OUT.c.created_at, _E.c.part < _OUT.c.part),
                and_(_E.c.created_at == _OUT.c.created_at, _E.c.part == _OUT.c.part, _E.c.id < _OUT.c.id),
            ),
        ),
    ),
)
_CLAIM = (
    update(_OUT)
    .where(
        _OUT.c.id.in_(bindparam("ids", expanding=True)),
        _OUT.c.status == "pending",
        _OUT.c.next_attempt_at <= bindparam("now"),
        ~_BLOCKED,
    )
    .values(
        status="sending",
        attempts=_OUT.c.attempts + 1,
        updated_at=bindparam("now"),
        claimed_by=bindparam("by"),
    )
    .returning(_OUT.c.id, _OUT.c.attempts)
)


class OutboxQueries:
    """`store.outbox`: shares the store's engine, write lock and event log."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Outbox jobs go first in the writer's queue: replies leave while a burst runs.
        self._writer = store.writer
        # The seam to the sender: called after a commit that queued parts, with those parts
        # (in commit order), so a sender need not poll for them.
        self.on_queued: Callable[[list[OutboxItem]], None] | None = None
        self._sent = _SentGroup(self)

    def queued_rows(
        self,
        *,
        channel: str,
        agent_id: str,
        session_id: str,
        message_id: str,
        parts: Sequence[OutboxPart],
        now: int,
    ) -> list[dict[str, Any]]:
        """The outbox rows of a reply, as Core INSERT values."""
        return [
            {
                "id": ids.message_id().replace("msg_", "out_"),
                "idempotency_key": p.key or f"{message_id}:{p.part}",
                "channel": channel,
                "agent_id": agent_id,
                "session_id": session_id,
                "message_id": message_id,
                "part": p.part,
                "parts": p.parts,
                "payload": p.payload,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "provider_message_id": None,
                "delivery": None,
                "last_error": None,
                "created_at": now,
                "updated_at": now,
            }
            for p in parts
        ]

    def after_queued(self, s: AsyncSession, rows: Sequence[dict[str, Any]], endpoint: str | None) -> None:
        """Hand the parts a transaction queued to `on_queued` once it has committed."""
        items = [
            OutboxItem(
                id=r["id"],
                idempotency_key=r["idempotency_key"],
                channel=r["channel"],
                agent_id=r["agent_id"],
                session_id=r["session_id"],
                message_id=r["message_id"],
                part=r["part"],
                parts=r["parts"],
                payload=r["payload"],
                attempts=0,
                endpoint=endpoint,
            )
            for r in rows
        ]

        def hand_over() -> None:
            if self.on_queued is not None:
                self.on_queued(items)

        after_commit(s, hand_over)

    def _read(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._store._read()

    async def _append(self, s: AsyncSession, events: Iterable[Event]) -> list[Event]:
        return await self._store._append(s, events)

    def _outbox_rows(
        self,
        *,
        channel: str,
        agent_id: str,
        session_id: str,
        message_id: str,
        parts: Sequence[OutboxPart],
        now: int,
    ) -> list[OutboxRow]:
        return [
            OutboxRow(
                id=ids.message_id().replace("msg_", "out_"),
                idempotency_key=p.key or f"{message_id}:{p.part}",
                channel=channel,
                agent_id=agent_id,
                session_id=session_id,
                message_id=message_id,
                part=p.part,
                parts=p.parts,
                payload=p.payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                provider_message_id=None,
                delivery=None,
                last_error=None,
                created_at=now,
                updated_at=now,
            )
            for p in parts
        ]

    async def enqueue(
        self, *, session_id: str, message_id: str, parts: Sequence[OutboxPart], events: Sequence[Event] = ()
    ) -> list[Event]:
        """Queue parts outside a reply's transaction; a part whose key is already queued is
        skipped (a re-run turn never queues the same progressive paragraph twice)."""
        now = now_ms()

        async def job(s: AsyncSession) -> list[Event]:
            row = await s.get_one(SessionRow, session_id)
            wanted = [p.key or f"{message_id}:{p.part}" for p in parts]
            known = set(
                await s.scalars(
                    select(OutboxRow.idempotency_key).where(OutboxRow.idempotency_key.in_(wanted))
                )
            )
            fresh = [p for p, key in zip(parts, wanted, strict=True) if key not in known]
            rows = self._outbox_rows(
                channel=row.channel,
                agent_id=row.agent_id,
                session_id=session_id,
                message_id=message_id,
                parts=fresh,
                now=now,
            )
            s.add_all(rows)
            # Handed to the sender after the commit, like a reply's parts: no poll needed.
            self.after_queued(s, [{c: getattr(r, c) for c in _HANDED} for r in rows], row.endpoint)
            return await self._append(s, events)

        return await self._writer.run(job, urgent=True)

    async def claim_due(self, limit: int = 32, *, by: str | None = None) -> list[OutboxItem]:
        """Claim the next part of each session whose turn to send has come (the poll).

        Parts of one session go strictly in order, one at a time: a session with a
        part in flight, or whose oldest pending part is still backing off, waits.
        Candidates are read outside the writer, then claimed by `claim`'s conditional
        UPDATE, which re-checks all of that: a part another claimer took meanwhile (the
        hand-off, another process) is simply not claimed here.
        """
        now = now_ms()
        async with self._read() as r:  # most wake-ups find nothing due: one cheap query then
            due = await r.scalar(
                select(OutboxRow.id)
                .where(OutboxRow.status == "pending", OutboxRow.next_attempt_at <= now)
                .limit(1)
            )
            if due is None:
                return []
            busy = set(
                await r.scalars(
                    select(OutboxRow.session_id).where(OutboxRow.status.in_(("sending", "uncertain")))
                )
            )
            rows = (
                await r.scalars(
                    select(OutboxRow)
                    .where(OutboxRow.status == "pending")
                    .order_by(OutboxRow.created_at, OutboxRow.part, OutboxRow.id)
                    .limit(2000)
                )
            ).all()
            seen: set[str] = set()
            heads: list[OutboxRow] = []
            for row in rows:
                if row.session_id in seen or row.session_id in busy:
                    continue
                seen.add(row.session_id)
                if row.next_attempt_at <= now:
                    heads.append(row)
                    if len(heads) >= limit:
                        break
            if not heads:
                return []
            found = await r.execute(
                select(SessionRow.id, SessionRow.endpoint).where(
                    SessionRow.id.in_({h.session_id for h in heads})
                )
            )
            endpoints: dict[str, str | None] = {sid: endpoint for sid, endpoint in found}
        return await self.claim([_item(h, endpoints.get(h.session_id)) for h in heads], by=by)

    async def claim(self, items: Sequence[OutboxItem], *, by: str | None = None) -> list[OutboxItem]:
        """Claim parts (handed over by the commit that queued them, or found by the poll):
        one UPDATE, no SELECT.

        Each part is claimed only if it is still pending and due and its session's order
        allows it (`_BLOCKED`); the claim is committed before the provider is called. A
        part not claimed here (another claimer took it, or an earlier part of its session
        waits) is left to `claim_due`. A variant for several processes on PostgreSQL may
        add `FOR UPDATE SKIP LOCKED` to skip rows another claimer holds instead of waiting.
        """
        if not items:
            return []
        now = now_ms()
        wanted = [i.id for i in items]

        async def job(s: AsyncSession) -> dict[str, int]:
            result = await s.execute(_CLAIM, {"ids": wanted, "now": now, "by": by})
            return {row.id: row.attempts for row in result}

        attempts = await self._writer.run(job, urgent=True)
        return [replace(i, attempts=attempts[i.id]) for i in items if i.id in attempts]

    async def release(self, outbox_ids: Sequence[str]) -> None:
        """Give back claimed parts whose send never started (a claim cut by shutdown)."""
        if not outbox_ids:
            return

        async def job(s: AsyncSession) -> None:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(list(outbox_ids)), OutboxRow.status == "sending")
                .values(status="pending", attempts=OutboxRow.attempts - 1, updated_at=now_ms())
            )

        return await self._writer.run(job, urgent=True)

    async def mark_sent(self, outbox_id: str, provider_message_id: str) -> list[Event]:
        now = now_ms()

        async def job(s: AsyncSession) -> list[Event]:
            # One UPDATE when the part had no receipt yet (the usual case) ...
            changed = (
                await s.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id == outbox_id, OutboxRow.delivery.is_(None))
                    .values(
                        status="sent",
                        provider_message_id=provider_message_id,
                        delivery="sent",
                        updated_at=now,
                    )
                    .returning(*_CHANGED)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if changed is None:
                # ... else a receipt (delivered, read or failed) overtook the send's own
                # response: record the id, keep the receipt's status, emit nothing.
                await s.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id == outbox_id)
                    .values(status="sent", provider_message_id=provider_message_id, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                return []
            return await self._delivery_changed(s, changed, "sent", None)

        return await self._writer.run(job, urgent=True)

    async def record_sent(self, item: OutboxItem, provider_message_id: str) -> list[Event]:
        """The outbox's `mark_sent`: parts whose sends finish while the writer is busy are
        recorded together, merged into one set-wise call (`mark_sent_many`)."""
        (events,) = await self._writer.run_grouped(self._sent, [(item, provider_message_id)], urgent=True)
        return events

    async def mark_sent_many(self, sent: Sequence[tuple[OutboxItem, str]]) -> list[Event]:
        async def job(s: AsyncSession) -> list[Event]:
            return [e for events in await self._sent.run_many(s, sent) for e in events]

        return await self._writer.run(job, urgent=True)

    # A send's own outcome is recorded only while the part is still `sending`: a receipt
    # that arrived first (the provider's status webhook can overtake a slow or timed-out
    # response) already proved it went out, and must not be undone into a resend.

    async def mark_retry(self, outbox_id: str, at: int, error: dict[str, Any]) -> None:
        async def job(s: AsyncSession) -> None:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == outbox_id, OutboxRow.status == "sending")
                .values(status="pending", next_attempt_at=at, last_error=error, updated_at=now_ms())
                .execution_options(synchronize_session=False)
            )

        return await self._writer.run(job, urgent=True)

    async def mark_uncertain(self, outbox_id: str, grace_ms: int, error: dict[str, Any]) -> None:
        now = now_ms()

        async def job(s: AsyncSession) -> None:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == outbox_id, OutboxRow.status == "sending")
                .values(status="uncertain", next_attempt_at=now + grace_ms, last_error=error, updated_at=now)
                .execution_options(synchronize_session=False)
            )

        return await self._writer.run(job, urgent=True)

    async def mark_failed(self, outbox_id: str, error: dict[str, Any]) -> list[Event]:
        async def job(s: AsyncSession) -> list[Event]:
            changed = (
                await s.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id == outbox_id, OutboxRow.status == "sending")
                    .values(status="failed", delivery=FINAL, last_error=error, updated_at=now_ms())
                    .returning(*_CHANGED)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if changed is None:
                return []
            return await self._delivery_changed(s, changed, FINAL, error)

        return await self._writer.run(job, urgent=True)

    async def recover_in_flight(self, grace_ms: int, *, shared: bool = False, restart: bool = True) -> int:
        """A part claimed by a process that died may or may not have gone out: `uncertain`.

        At start-up (`restart`) its grace period starts now, and so does that of a part left
        uncertain by the last stop: a receipt the provider could not deliver while the
        gateway was down comes when the provider retries, after the restart, and must find
        the part still waiting. With several instances (`shared`), only the parts of
        instances that are no longer alive (no live `instance:` row in `turn_leases`, on
        the database's clock) are taken: another live instance's send is its own.
        """
        now = now_ms()

        async def job(s: AsyncSession) -> int:
            stmt = update(OutboxRow).where(OutboxRow.status == "sending")
            if shared:
                stmt = stmt.where(
                    or_(
                        OutboxRow.claimed_by.is_(None),
                        ~exists(
                            select(literal(1))
                            .select_from(TurnLeaseRow)
                            .where(
                                TurnLeaseRow.session_id == literal("instance:") + OutboxRow.claimed_by,
                                TurnLeaseRow.expires_at >= text(DB_NOW_MS),
                            )
                        ),
                    )
                )
            res = await s.execute(
                stmt.values(status="uncertain", next_attempt_at=now + grace_ms, updated_at=now),
                execution_options={"synchronize_session": False},
            )
            if restart:
                await s.execute(
                    update(OutboxRow)
                    .where(OutboxRow.status == "uncertain", OutboxRow.next_attempt_at < now + grace_ms)
                    .values(next_attempt_at=now + grace_ms)
                )
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

        return await self._writer.run(job, urgent=True)

    async def expire_uncertain(self, max_attempts: int) -> list[Event]:
        """Uncertain parts that no receipt settled within the grace period are sent again.

        Providers report an accepted send within seconds, so a part still unconfirmed
        after the grace period most likely never went out (the documented rule: a rare
        duplicate is better than a lost reply). A part out of attempts fails instead.
        """
        now = now_ms()
        async with self._read() as r:  # checked every second, usually none: no writer job then
            expired = await r.scalar(
                select(OutboxRow.id)
                .where(OutboxRow.status == "uncertain", OutboxRow.next_attempt_at <= now)
                .limit(1)
            )
        if expired is None:
            return []

        async def job(s: AsyncSession) -> list[Event]:
            events: list[Event] = []
            rows = (
                await s.scalars(
                    select(OutboxRow).where(OutboxRow.status == "uncertain", OutboxRow.next_attempt_at <= now)
                )
            ).all()
            for row in rows:
                error = {
                    "code": "delivery_unknown",
                    "message": "the send's outcome was unknown (the gateway stopped mid-call, or the "
                    "provider did not answer in time) and no delivery receipt arrived within the "
                    "grace period",
                }
                if row.attempts < max_attempts:
                    row.status, row.next_attempt_at, row.last_error = "pending", now, error
                    row.updated_at = now
                    continue
                row.status, row.delivery, row.last_error, row.updated_at = "failed", FINAL, error, now
                events += await self._delivery_changed(s, row, FINAL, error)
            return events

        return await self._writer.run(job, urgent=True)

    async def delivery_status(
        self,
        *,
        channel: str,
        provider_message_id: str,
        status: str,
        error: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> list[Event]:
        """A provider's receipt for a message we sent. Returns the events it caused (maybe none)."""

        async def job(s: AsyncSession) -> list[Event]:
            row = await s.scalar(
                select(OutboxRow).where(
                    OutboxRow.channel == channel, OutboxRow.provider_message_id == provider_message_id
                )
            )
            if row is None and idempotency_key:
                row = await s.scalar(select(OutboxRow).where(OutboxRow.idempotency_key == idempotency_key))
                if row is not None and row.provider_message_id not in (None, provider_message_id):
                    row = None  # the key names a part already sent as another message: not this one
                if row is not None and row.status in ("uncertain", "sending"):
                    # The part did go out before the crash: settle it instead of failing it.
                    row.status, row.provider_message_id = "sent", provider_message_id
            if row is None or not advances(row.delivery, status):
                return []
            row.delivery, row.updated_at = status, now_ms()
            if status == FINAL:
                row.last_error = error
            return await self._delivery_changed(s, row, status, error)

        return await self._writer.run(job, urgent=True)

    async def close_window(self, session_id: str) -> None:
        hot = self._store.hot

        async def job(s: AsyncSession) -> None:
            await s.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(window_closed_at=now_ms(), version=SessionRow.version + 1)
            )
            after_commit(s, lambda: hot.drop([session_id]))

        return await self._writer.run(job, urgent=True)

    async def outbox_for(self, message_id: str) -> list[dict[str, Any]]:
        async with self._read() as s:
            rows = await s.scalars(
                select(OutboxRow).where(OutboxRow.message_id == message_id).order_by(OutboxRow.part)
            )
            return [
                {
                    "part": r.part,
                    "status": r.status,
                    "delivery": r.delivery,
                    "attempts": r.attempts,
                    "providerMessageId": r.provider_message_id,
                    "error": r.last_error,
                    "payload": r.payload,
                }
                for r in rows
            ]

    async def _delivery_changed(
        self, s: AsyncSession, row: Any, status: str, error: dict[str, Any] | None
    ) -> list[Event]:
        """Update the message's overall status (its least advanced part) and emit `message.status`.

        `row` is an `OutboxRow` or a row of `_CHANGED`. A message of one part needs no
        look at its siblings: its status is that part's.
        """
        if row.parts == 1:
            states: list[str | None] = [status]
        else:
            states = list(
                await s.scalars(select(OutboxRow.delivery).where(OutboxRow.message_id == row.message_id))
            )
        values: dict[str, Any] = {"status": _overall(states)}
        if error is not None:
            values["error"] = error
        if row.part == 0 and row.provider_message_id:
            values["provider_message_id"] = func.coalesce(
                MessageRow.provider_message_id, row.provider_message_id
            )
        await s.execute(
            update(MessageRow)
            .where(MessageRow.id == row.message_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        data: dict[str, Any] = {
            "messageId": row.message_id,
            "providerMessageId": row.provider_message_id,
            "status": status,
            "part": row.part,
            "parts": row.parts,
        }
        if error is not None:
            data["error"] = error
        event = Event(
            type=EventType.MESSAGE_STATUS,
            agent=row.agent_id,
            session_id=row.session_id,
            channel=row.channel,
            data=data,
        )
        return await self._append(s, [event])


class _SentGroup:
    """Parts that went out, recorded set-wise (the writer merges queued `record_sent`s).

    At most four statements whatever their number: one UPDATE of the parts that had no
    receipt yet (RETURNING which), one for those a receipt overtook (rare: the id is
    recorded, the receipt's status kept, nothing emitted), the siblings of messages of
    several parts, one UPDATE of the messages, one INSERT of the events.
    """

    def __init__(self, queries: OutboxQueries) -> None:
        self._queries = queries

    async def run_many(self, s: AsyncSession, sent: Sequence[tuple[OutboxItem, str]]) -> list[list[Event]]:
        if not sent:
            return []
        now = now_ms()
        ids_ = {item.id: pid for item, pid in sent}
        provider_id = case(ids_, value=OutboxRow.id)
        advanced = set(
            await s.scalars(
                update(OutboxRow)
                .where(OutboxRow.id.in_(list(ids_)), OutboxRow.delivery.is_(None))
                .values(status="sent", provider_message_id=provider_id, delivery="sent", updated_at=now)
                .returning(OutboxRow.id)
                .execution_options(synchronize_session=False)
            )
        )
        overtaken = [i for i in ids_ if i not in advanced]
        if overtaken:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(overtaken))
                .values(status="sent", provider_message_id=provider_id, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        changed = [(item, pid) for item, pid in sent if item.id in advanced]
        if not changed:
            return [[] for _ in sent]
        several = {item.message_id for item, _ in changed if item.parts != 1}
        states: dict[str, list[str | None]] = defaultdict(list)
        if several:
            rows = await s.execute(
                select(OutboxRow.message_id, OutboxRow.delivery).where(OutboxRow.message_id.in_(several))
            )
            for message_id, delivery in rows:
                states[message_id].append(delivery)
        overall = {
            item.message_id: _overall(states[item.message_id]) if item.parts != 1 else "sent"
            for item, _ in changed
        }
        first = {item.message_id: pid for item, pid in changed if item.part == 0}
        values: dict[str, Any] = {"status": case(overall, value=MessageRow.id)}
        if first:
            values["provider_message_id"] = func.coalesce(
                MessageRow.provider_message_id, case(first, value=MessageRow.id, else_=None)
            )
        await s.execute(
            update(MessageRow)
            .where(MessageRow.id.in_(list(overall)))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        stored = await self._queries._append(
            s,
            [
                Event(
                    type=EventType.MESSAGE_STATUS,
                    agent=item.agent_id,
                    session_id=item.session_id,
                    channel=item.channel,
                    data={
                        "messageId": item.message_id,
                        "providerMessageId": pid,
                        "status": "sent",
                        "part": item.part,
                        "parts": item.parts,
                    },
                )
                for item, pid in changed
            ],
        )
        by_id = {item.id: event for (item, _), event in zip(changed, stored, strict=True)}
        return [[by_id[item.id]] if item.id in by_id else [] for item, _ in sent]


def _overall(states: Sequence[str | None]) -> str:
    """A message's status from its parts': failed if one failed, else the least advanced."""
    return FINAL if FINAL in states else min((x or "queued" for x in states), key=lambda x: RANK.get(x, 0))


# What `after_queued` reads of a queued row.
_HANDED = (
    "id",
    "idempotency_key",
    "channel",
    "agent_id",
    "session_id",
    "message_id",
    "part",
    "parts",
    "payload",
)

# What `_delivery_changed` needs of a part, returned by the UPDATE that changed it.
_CHANGED = (
    OutboxRow.message_id,
    OutboxRow.session_id,
    OutboxRow.agent_id,
    OutboxRow.channel,
    OutboxRow.part,
    OutboxRow.parts,
    OutboxRow.provider_message_id,
)


def _item(r: OutboxRow, endpoint: str | None) -> OutboxItem:
    return OutboxItem(
        id=r.id,
        idempotency_key=r.idempotency_key,
        channel=r.channel,
        agent_id=r.agent_id,
        session_id=r.session_id,
        message_id=r.message_id,
        part=r.part,
        parts=r.parts,
        payload=r.payload,
        attempts=r.attempts,
        endpoint=endpoint,
    )
