"""The store: every query and transaction of the gateway, and nothing else.

Each public method is one transaction. Writes that create events append them to the
event log inside the same transaction and return them with their `seq`, so the
caller can publish them after the commit (store first, then publish).

`seq` is commit-ordered: SQLite has one writer at a time; on PostgreSQL the append
takes a transaction-level advisory lock, held to the commit, so a reader that saw
`seq = n` never later finds a smaller committed `seq` (across processes too).

Writers in this process are also serialized by one asyncio lock, held through the
commit and the synchronous `on_commit` hand-off of the new events to the bus: the
bus therefore sees this process's events in `seq` order, and a feed that dedupes
by `seq` never skips one. (On SQLite the lock also makes writers queue instead of
failing with SQLITE_BUSY.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway import ids
from gateway.events import ContactRef, Event, now_ms
from gateway.store.hot import HotSessions
from gateway.store.models import (
    AgentRow,
    ApiKeyRow,
    BrowserTokenRow,
    ContactRow,
    EventRow,
    MessageRow,
    OutboxRow,
    SessionRow,
)
from gateway.store.outbox import OutboxPart, OutboxQueries
from gateway.store.pricing import PricingQueries
from gateway.store.records import (
    ApiKeyRecord,
    ContactRecord,
    MessageRecord,
    SessionRecord,
    TokenRecord,
)
from gateway.store.writer import Writer, after_commit, lock_event_log
from gateway.types import Channel, EventType, SessionStatus


@dataclass(frozen=True, kw_only=True, slots=True)
class Ingested:
    """What `ingest_message` did."""

    session: SessionRecord
    message: MessageRecord | None  # None when the message was a duplicate
    events: list[Event] = field(default_factory=list)
    duplicate: bool = False
    started: bool = False


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


class Store:
    def __init__(self, engine: AsyncEngine, on_commit: Callable[[list[Event]], None] | None = None) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._pg = engine.dialect.name == "postgresql"
        self._writer = Writer(self._sessions, postgres=self._pg, on_commit=on_commit)
        self._ingest = _IngestGroup(self)
        self.hot = HotSessions()
        self.outbox = OutboxQueries(self)
        self.pricing = PricingQueries(self)

    @property
    def on_commit(self) -> Callable[[list[Event]], None] | None:
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, value: Callable[[list[Event]], None] | None) -> None:
        self._writer.on_commit = value

    @property
    def writer(self) -> Writer:
        return self._writer

    async def close(self) -> None:
        await self._writer.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as s:
            yield s

    # ------------------------------------------------------------------ events

    async def _append(self, s: AsyncSession, events: Iterable[Event]) -> list[Event]:
        events = list(events)
        if not events:
            return []
        await lock_event_log(s)
        # Core, not ORM objects: one multi-row INSERT … RETURNING seq, in the events' order.
        rows = [
            {
                "ts": e.ts,
                "type": str(e.type),
                "agent_id": e.agent,
                "session_id": e.session_id,
                "channel": e.channel,
                "data": dict(e.data),
            }
            for e in events
        ]
        result = await s.execute(insert(EventRow).returning(EventRow.seq, sort_by_parameter_order=True), rows)
        seqs = list(result.scalars())
        stored = [e.with_seq(seq) for e, seq in zip(events, seqs, strict=True)]
        s.info.setdefault("events", []).extend(stored)
        return stored

    async def append_events(self, events: Iterable[Event]) -> list[Event]:
        async def job(s: AsyncSession) -> list[Event]:
            return await self._append(s, events)

        return await self._writer.run(job)

    async def events_after(
        self,
        seq: int,
        *,
        agents: Iterable[str] | None = None,
        session_id: str | None = None,
        types: Iterable[str] | None = None,
        limit: int = 500,
    ) -> list[Event]:
        q = select(EventRow).where(EventRow.seq > seq).order_by(EventRow.seq).limit(limit)
        if agents is not None:
            q = q.where(EventRow.agent_id.in_(list(agents)))
        if session_id is not None:
            q = q.where(EventRow.session_id == session_id)
        if types is not None:
            q = q.where(EventRow.type.in_(list(types)))
        async with self._read() as s:
            rows = (await s.scalars(q)).all()
        return [_event(r) for r in rows]

    async def last_seq(self) -> int:
        async with self._read() as s:
            return int((await s.scalar(select(func.max(EventRow.seq)))) or 0)

    # ------------------------------------------------------------------ agents

    async def sync_agents(self, configs: dict[str, dict[str, Any]], origin: str = "config") -> None:
        now = now_ms()

        async def job(s: AsyncSession) -> None:
            existing = {r.id: r for r in (await s.scalars(select(AgentRow))).all()}
            for agent_id, config in configs.items():
                row = existing.get(agent_id)
                tenant = config.get("tenant")
                if row is None:
                    s.add(
                        AgentRow(
                            id=agent_id,
                            origin=origin,
                            tenant=tenant,
                            config=config,
                            paused=False,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                elif row.config != config or row.origin != origin or row.tenant != tenant:
                    row.config, row.origin, row.tenant, row.updated_at = config, origin, tenant, now

        return await self._writer.run(job)

    async def agent_rows(self) -> dict[str, tuple[str, dict[str, Any], bool]]:
        async with self._read() as s:
            rows = (await s.scalars(select(AgentRow))).all()
        return {r.id: (r.origin, r.config, r.paused) for r in rows}

    # ---------------------------------------------------------------- API keys

    async def add_api_key(
        self,
        *,
        name: str,
        prefix: str,
        sha256: str,
        tenant: str | None,
        agents: list[str] | None = None,
        read_only: bool = False,
        admin: bool = False,
    ) -> ApiKeyRecord:
        key_id, created = ids.key_id(), now_ms()

        async def job(s: AsyncSession) -> ApiKeyRecord:
            row = ApiKeyRow(
                id=key_id,
                name=name,
                prefix=prefix,
                sha256=sha256,
                tenant=tenant,
                agents=agents,
                read_only=read_only,
                admin=admin,
                created_at=created,
                revoked_at=None,
                last_used_at=None,
            )
            s.add(row)
            await s.flush()
            return _key(row)

        return await self._writer.run(job)

    async def api_key_by_hash(self, sha256: str) -> ApiKeyRecord | None:
        async with self._read() as s:
            row = await s.scalar(select(ApiKeyRow).where(ApiKeyRow.sha256 == sha256))
        return None if row is None else _key(row)

    async def api_keys(self) -> list[ApiKeyRecord]:
        async with self._read() as s:
            return [_key(r) for r in (await s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))]

    async def touch_api_key(self, key_id: str, at: int) -> None:
        """Record a key's last use (callers throttle this to about once a minute)."""

        async def job(s: AsyncSession) -> None:
            await s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=at))

        return await self._writer.run(job)

    async def revoke_api_key(self, key: str) -> bool:
        async def job(s: AsyncSession) -> bool:
            res = await s.execute(
                update(ApiKeyRow)
                .where(or_(ApiKeyRow.id == key, ApiKeyRow.prefix == key), ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=now_ms())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

        return await self._writer.run(job)

    # ---------------------------------------------------------- browser tokens

    async def add_token(self, sha256: str, token: TokenRecord) -> None:
        async def job(s: AsyncSession) -> None:
            s.add(
                BrowserTokenRow(
                    sha256=sha256,
                    agent_id=token.agent_id,
                    channel=token.channel,
                    session_id=token.session_id,
                    meta=token.meta,
                    expires_at=token.expires_at,
                    used_at=None,
                )
            )
            # Housekeeping on the write path keeps the table small without a timer.
            await s.execute(delete(BrowserTokenRow).where(BrowserTokenRow.expires_at < now_ms() - 3_600_000))

        return await self._writer.run(job)

    async def consume_token(self, sha256: str) -> TokenRecord | None:
        """Mark a token used, atomically: a second use (from any process) gets None."""
        now = now_ms()

        async def job(s: AsyncSession) -> TokenRecord | None:
            res = await s.execute(
                update(BrowserTokenRow)
                .where(
                    BrowserTokenRow.sha256 == sha256,
                    BrowserTokenRow.used_at.is_(None),
                    BrowserTokenRow.expires_at > now,
                )
                .values(used_at=now)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return None
            row = await s.get_one(BrowserTokenRow, sha256)
            return TokenRecord(
                agent_id=row.agent_id,
                channel=row.channel,
                session_id=row.session_id,
                meta=row.meta,
                expires_at=row.expires_at,
            )

        return await self._writer.run(job)

    # -------------------------------------------------------- sessions, ingest

    async def _contact(self, s: AsyncSession, ref: ContactRef, agent_id: str) -> ContactRow:
        """The agent's tenant's contact for `ref` (each tenant has its own contact rows)."""
        tenant = await _tenant_of(s, agent_id)
        row = await s.scalar(
            select(ContactRow).where(
                ContactRow.tenant == tenant,
                ContactRow.channel == str(ref.channel),
                ContactRow.address == ref.address,
            )
        )
        if row is None:
            row = ContactRow(
                id=ids.contact_id(),
                tenant=tenant,
                channel=str(ref.channel),
                address=ref.address,
                name=ref.name,
                paused_agents=[],
                created_at=now_ms(),
            )
            s.add(row)
            await s.flush()
        elif ref.name and row.name != ref.name:
            row.name = ref.name
        return row

    async def _new_session(
        self,
        s: AsyncSession,
        *,
        agent_id: str,
        channel: Channel,
        contact: ContactRow | None,
        direction: str,
        meta: dict[str, Any],
        session_id: str | None,
        now: int,
        endpoint: str | None = None,
    ) -> tuple[SessionRow, Event]:
        paused = _paused_for(await s.get(AgentRow, agent_id), contact)
        row, started = _session_row(
            agent_id=agent_id,
            channel=channel,
            contact=contact,
            direction=direction,
            meta=meta,
            session_id=session_id,
            now=now,
            endpoint=endpoint,
            paused=paused,
        )
        s.add(row)
        await s.flush()
        return row, started

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

    async def ingest_message(self, **spec: Any) -> Ingested:
        """Store one inbound user message, its dedupe key and its event in one transaction.

        Keywords: `agent_id`, `channel`, `text`, and optionally `type`, `contact`,
        `session_id`, `provider_message_id`, `parts`, `meta` (a new session's metadata),
        `extra` (added to the event), `endpoint`, `turn` (False: stored answered),
        `message_meta`. With `session_id` the message joins that (active) session;
        otherwise it joins the contact's active session with the agent on this channel,
        or starts one.
        """
        (result,) = await self._writer.run_grouped(self._ingest, [spec])
        return result

    async def ingest_many(self, specs: Sequence[dict[str, Any]]) -> list[Ingested]:
        """Several inbound messages (a webhook batch) in ONE transaction: all stored, or none.

        Each spec holds `ingest_message`'s keyword arguments.
        """
        return await self._writer.run_grouped(self._ingest, specs)

    async def _ingest_batch(
        self, s: AsyncSession, now: int, specs: Sequence[dict[str, Any]]
    ) -> list[Ingested]:
        """Set-wise: a handful of statements per batch, whatever its size (a campaign's burst
        of a thousand new contacts is one delivery, and Meta waits only seconds for the 200).

        In batch order: a message already stored (or earlier in the batch) under the same
        `(channel, provider id)` is a duplicate; the others find or create their contact
        and session (messages of one new contact share one new session), and every event
        (`session.started` before its session's first `user.message`) is appended at once.
        """
        specs = [{"type": "text", "parts": (), "turn": True, **spec} for spec in specs]
        results: list[Ingested | None] = [None] * len(specs)
        # 1. Duplicates: against the table, then within the batch.
        stored: dict[tuple[str, str], str] = {}
        by_channel: dict[str, set[str]] = {}
        for spec in specs:
            if spec.get("provider_message_id") is not None:
                by_channel.setdefault(str(spec["channel"]), set()).add(spec["provider_message_id"])
        for channel, pids in by_channel.items():
            for chunk in _chunks(sorted(pids)):
                found_ids = await s.execute(
                    select(MessageRow.provider_message_id, MessageRow.session_id).where(
                        MessageRow.channel == channel, MessageRow.provider_message_id.in_(chunk)
                    )
                )
                stored.update({(channel, str(pid)): sid for pid, sid in found_ids})
        fresh: list[int] = []  # indexes of the specs to store
        batch_keys: dict[tuple[str, str], int] = {}
        dup_of: dict[int, tuple[str, str]] = {}
        for i, spec in enumerate(specs):
            pid = spec.get("provider_message_id")
            key = (str(spec["channel"]), str(pid))
            if pid is not None and (key in stored or key in batch_keys):
                dup_of[i] = key
                continue
            if pid is not None:
                batch_keys[key] = i
            fresh.append(i)
        # 2. Contacts, filed under each agent's tenant: read the known ones in one query per
        # (tenant, channel), add the new ones.
        agents = {
            row.id: row
            for row in await s.scalars(
                select(AgentRow).where(AgentRow.id.in_(sorted({specs[i]["agent_id"] for i in fresh})))
            )
        }

        def contact_key(i: int) -> tuple[str, str, str] | None:
            ref = specs[i].get("contact")
            if ref is None:
                return None
            agent = agents.get(specs[i]["agent_id"])
            return ((agent.tenant if agent is not None else None) or "", str(ref.channel), ref.address)

        refs: dict[tuple[str, str, str], ContactRef] = {}
        for i in fresh:
            if (place := contact_key(i)) is not None:
                refs[place] = specs[i]["contact"]  # the latest name wins
        contacts: dict[tuple[str, str, str], ContactRow] = {}
        by_place: dict[tuple[str, str], set[str]] = {}
        for tenant, channel, address in refs:
            by_place.setdefault((tenant, channel), set()).add(address)
        for (tenant, channel), addresses in by_place.items():
            for chunk in _chunks(sorted(addresses)):
                for row in await s.scalars(
                    select(ContactRow).where(
                        ContactRow.tenant == tenant,
                        ContactRow.channel == channel,
                        ContactRow.address.in_(chunk),
                    )
                ):
                    contacts[(row.tenant, row.channel, row.address)] = row
        new_contacts: list[ContactRow] = []
        for place, ref in refs.items():
            found = contacts.get(place)
            if found is None:
                row = ContactRow(
                    id=ids.contact_id(),
                    tenant=place[0],
                    channel=place[1],
                    address=ref.address,
                    name=ref.name,
                    paused_agents=[],
                    created_at=now,
                )
                contacts[place] = row
                new_contacts.append(row)
            elif ref.name and found.name != ref.name:
                found.name = ref.name
        if new_contacts:
            s.add_all(new_contacts)
            await s.flush()
        # 3. Sessions: named ones, then each contact's active one with the agent on the channel.
        named = {specs[i]["session_id"] for i in fresh if specs[i].get("session_id") is not None}
        sessions: dict[str, SessionRow] = {}
        for chunk in _chunks(sorted(named)):
            for srow in await s.scalars(select(SessionRow).where(SessionRow.id.in_(chunk))):
                sessions[srow.id] = srow
        session_contacts = {r.contact_id for r in sessions.values() if r.contact_id is not None}
        known_contacts = {row.id: row for row in contacts.values()}
        missing = sorted(session_contacts - set(known_contacts))
        for chunk in _chunks(missing):
            for other in await s.scalars(select(ContactRow).where(ContactRow.id.in_(chunk))):
                known_contacts[other.id] = other
        active: dict[tuple[str, str, str], SessionRow] = {}
        wanted = {
            (specs[i]["agent_id"], contacts[place].id, str(specs[i]["channel"]))
            for i in fresh
            if specs[i].get("session_id") is None and (place := contact_key(i)) is not None
        }
        agent_ids = sorted({a for a, _, _ in wanted})
        contact_ids = sorted({c for _, c, _ in wanted})
        for chunk in _chunks(contact_ids):
            candidates = await s.scalars(
                select(SessionRow)
                .where(
                    SessionRow.agent_id.in_(agent_ids),
                    SessionRow.contact_id.in_(chunk),
                    SessionRow.status == SessionStatus.ACTIVE,
                )
                .order_by(SessionRow.started_at.desc())
            )
            for candidate in candidates:
                assert candidate.contact_id is not None
                active.setdefault((candidate.agent_id, candidate.contact_id, candidate.channel), candidate)
        # 4. Messages (and new sessions), in batch order.
        events: list[Event] = []
        placed: list[tuple[int, SessionRow, ContactRow | None, MessageRow, bool, int]] = []
        new_sessions: list[SessionRow] = []
        new_messages: list[MessageRow] = []
        for i in fresh:
            spec = specs[i]
            at = now + i
            agent_id, channel = spec["agent_id"], spec["channel"]
            place = contact_key(i)
            crow: ContactRow | None = contacts[place] if place is not None else None
            srow_opt: SessionRow | None = None
            if spec.get("session_id") is not None:
                srow_opt = sessions.get(spec["session_id"])
                if crow is None and srow_opt is not None and srow_opt.contact_id is not None:
                    crow = known_contacts.get(srow_opt.contact_id)
            elif crow is not None:
                srow_opt = active.get((agent_id, crow.id, str(channel)))
            started = srow_opt is None or srow_opt.status != SessionStatus.ACTIVE
            if started:
                srow, ev = _session_row(
                    agent_id=agent_id,
                    channel=channel,
                    contact=crow,
                    direction="inbound",
                    meta=spec.get("meta") or {},
                    session_id=None,
                    now=at,
                    endpoint=spec.get("endpoint"),
                    paused=_paused_for(agents.get(agent_id), crow),
                )
                new_sessions.append(srow)
                events.append(ev)
                if crow is not None and spec.get("session_id") is None:
                    active[(agent_id, crow.id, str(channel))] = srow  # its next messages join it
            else:
                assert srow_opt is not None
                srow = srow_opt
            paused = srow.paused or _paused_for(agents.get(agent_id), crow)
            mrow = MessageRow(
                id=ids.message_id(),
                session_id=srow.id,
                channel=str(channel),
                role="user",
                source="user",
                type=spec["type"],
                text=spec["text"],
                parts=list(spec["parts"]),
                provider_message_id=spec.get("provider_message_id"),
                status=None,
                error=None,
                in_reply_to=None,
                pending=spec["turn"] and not paused,
                author=None,
                meta=spec.get("message_meta"),
                created_at=at,
            )
            new_messages.append(mrow)
            srow.last_message_at = at
            version = srow.version or 0
            srow.version = version + 1
            srow.last_inbound_at = at
            if spec.get("endpoint") and srow.endpoint is None:
                srow.endpoint = spec["endpoint"]
            data: dict[str, Any] = {
                "messageId": mrow.id,
                "text": spec["text"],
                "type": spec["type"],
                "paused": paused,
            }
            if spec["parts"]:
                data["media"] = list(spec["parts"])
            if spec.get("extra"):
                data.update(spec["extra"])
            events.append(
                Event(
                    type=EventType.USER_MESSAGE,
                    agent=agent_id,
                    session_id=srow.id,
                    channel=str(channel),
                    ts=at,
                    data=data,
                )
            )
            placed.append((i, srow, crow, mrow, started, version))
        if new_sessions:
            s.add_all(new_sessions)
            await s.flush()
        s.add_all(new_messages)
        await s.flush()  # a concurrent duplicate (another process) fails the whole transaction
        stored_events = await self._append(s, events)
        by_session: dict[str, list[Event]] = {}
        for e in stored_events:
            by_session.setdefault(e.session_id or "", []).append(e)
        for i, srow, its_contact, mrow, started, version in placed:
            mine = [
                e
                for e in by_session.get(srow.id, [])
                if e.data.get("messageId") == mrow.id or (started and e.type == EventType.SESSION_STARTED)
            ]
            results[i] = Ingested(
                session=_session(srow, its_contact), message=_message(mrow), events=mine, started=started
            )
            self._hot_ingested(s, results[i], version, started)
        # 5. Duplicates answer with the session that holds the original.
        dup_sessions = {stored[k] for k in dup_of.values() if k in stored}
        held: dict[str, SessionRow] = {}
        for chunk in _chunks(sorted(dup_sessions)):
            for srow in await s.scalars(select(SessionRow).where(SessionRow.id.in_(chunk))):
                held[srow.id] = srow
        for i, key in dup_of.items():
            if key in stored:
                original = held[stored[key]]
                record = _session(original, await _contact_of(s, original))
            else:
                _, original, its_contact, _, _, _ = next(p for p in placed if p[0] == batch_keys[key])
                record = _session(original, its_contact)
            results[i] = Ingested(session=record, message=None, duplicate=True)
        return [r for r in results if r is not None]

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

    # ------------------------------------------------------------ hot state

    def _hot_ingested(self, s: AsyncSession, result: Ingested | None, version: int, started: bool) -> None:
        if result is None or result.message is None:
            return
        session, message = result.session, result.message
        after_commit(s, lambda: self.hot.ingested(session, message, version, version + 1, started=started))

    def _touched(self, s: AsyncSession, session_ids: Iterable[str]) -> None:
        """After the commit, forget this process's hot state of these sessions."""
        sids = list(session_ids)
        if sids:
            after_commit(s, lambda: self.hot.drop(sids))

    async def _bump(self, s: AsyncSession, session_ids: Iterable[str]) -> None:
        """A write to sessions or their messages outside the hot paths: bump their version
        (another process's hot state notices) and drop this process's (gateway/store/hot.py)."""
        sids = sorted(set(session_ids))
        if not sids:
            return
        for chunk in _chunks(sids):
            await s.execute(
                update(SessionRow).where(SessionRow.id.in_(chunk)).values(version=SessionRow.version + 1)
            )
        self._touched(s, sids)

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

    async def messages(self, session_id: str) -> list[MessageRecord]:
        async with self._read() as s:
            rows = await s.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id)
                .order_by(MessageRow.created_at, MessageRow.id)
            )
            return [_message(r) for r in rows]

    async def pending_sessions(self, *, exclude_channels: Sequence[str] = ()) -> list[str]:
        """Active sessions with user messages still waiting for their turn (restart recovery)."""
        async with self._read() as s:
            q = (
                select(MessageRow.session_id)
                .join(SessionRow, SessionRow.id == MessageRow.session_id)
                .where(MessageRow.pending.is_(True), SessionRow.status == SessionStatus.ACTIVE)
            )
            if exclude_channels:
                q = q.where(SessionRow.channel.not_in(list(exclude_channels)))
            rows = await s.scalars(q.distinct())
            return list(rows)

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

    async def update_message(self, message_id: str, *, text: str, meta: dict[str, Any] | None = None) -> None:
        async def job(s: AsyncSession) -> None:
            row = await s.get_one(MessageRow, message_id)
            row.text = text
            if meta:
                row.meta = {**(row.meta or {}), **meta}
            await self._bump(s, [row.session_id])

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
            row = await s.get(SessionRow, session_id)
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


class _IngestGroup:
    """Every inbound message queued at the writer, stored by one set-wise `_ingest_batch`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def run_many(self, s: AsyncSession, items: Sequence[dict[str, Any]]) -> list[Ingested]:
        return await self._store._ingest_batch(s, now_ms(), items)


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
