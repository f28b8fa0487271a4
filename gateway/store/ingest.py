"""Inbound messages: stored with their dedupe key and events, set-wise, a batch at a time.

Every inbound message queued at the writer is one item of `_IngestGroup`: the writer
merges all that queued up into one `_ingest_batch` (a handful of statements whatever
its size), inside its batch transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import ContactRef, Event, now_ms
from gateway.store.core import StoreCore
from gateway.store.dedupe import _duplicates
from gateway.store.models import AgentRow, ContactRow, MessageRow, SessionRow
from gateway.store.records import Ingested
from gateway.store.rows import (
    _chunks,
    _contact_of,
    _message_from,
    _paused_for,
    _session,
    _session_row,
    _values,
)
from gateway.types import EventType, SessionStatus


class IngestRepo(StoreCore):
    async def ingest_message(self, **spec: Any) -> Ingested:
        """Store one inbound user message, its dedupe key and its event in one transaction.

        Keywords: `agent_id`, `channel`, `text`, and optionally `type`, `contact`,
        `session_id`, `provider_message_id`, `parts`, `meta` (a new session's metadata),
        `extra` (added to the event), `endpoint`, `turn` (False: stored answered),
        `message_meta`, `active_only` (with `session_id`: unknown raises NoResultFound, ended
        stores nothing and answers `ended`). With `session_id` the message joins that session;
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
        stored, fresh, batch_keys, dup_of = await _duplicates(s, specs)
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
        placed: list[tuple[int, SessionRow, ContactRow | None, dict[str, Any], bool, int]] = []
        # New sessions and every message go in as Core multi-row INSERTs (no unit of work):
        # new session rows are never added to the ORM session, only read for their values.
        new_sessions: list[SessionRow] = []
        new_messages: list[dict[str, Any]] = []
        for i in fresh:
            spec = specs[i]
            at = now + i
            agent_id, channel = spec["agent_id"], spec["channel"]
            place = contact_key(i)
            crow: ContactRow | None = contacts[place] if place is not None else None
            srow_opt: SessionRow | None = None
            if spec.get("session_id") is not None:
                srow_opt = sessions.get(spec["session_id"])
                if spec.get("active_only"):  # a chat frame, an API post: only into a live session
                    if srow_opt is None:
                        raise NoResultFound(f"no session {spec['session_id']!r}")
                    if srow_opt.status != SessionStatus.ACTIVE:
                        known = known_contacts.get(srow_opt.contact_id or "")
                        results[i] = Ingested(session=_session(srow_opt, known), message=None, ended=True)
                        continue
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
            mrow: dict[str, Any] = {
                "id": ids.message_id(),
                "session_id": srow.id,
                "channel": str(channel),
                "role": "user",
                "source": "user",
                "type": spec["type"],
                "text": spec["text"],
                "parts": list(spec["parts"]),
                "provider_message_id": spec.get("provider_message_id"),
                "status": None,
                "error": None,
                "in_reply_to": None,
                "pending": spec["turn"] and not paused,
                "author": None,
                "meta": spec.get("message_meta"),
                "created_at": at,
            }
            new_messages.append(mrow)
            srow.last_message_at = at
            version = srow.version or 0
            srow.version = version + 1
            srow.last_inbound_at = at
            if spec.get("endpoint") and srow.endpoint is None:
                srow.endpoint = spec["endpoint"]
            data: dict[str, Any] = {
                "messageId": mrow["id"],
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
            await s.execute(insert(SessionRow), [_values(r) for r in new_sessions])
        # A concurrent duplicate (another process) fails the whole transaction.
        if new_messages:
            await s.execute(insert(MessageRow), new_messages)
        stored_events = await self._append(s, events)
        by_session: dict[str, list[Event]] = {}
        for e in stored_events:
            by_session.setdefault(e.session_id or "", []).append(e)
        for i, srow, its_contact, mrow, started, version in placed:
            mine = [
                e
                for e in by_session.get(srow.id, [])
                if e.data.get("messageId") == mrow["id"] or (started and e.type == EventType.SESSION_STARTED)
            ]
            results[i] = Ingested(
                session=_session(srow, its_contact), message=_message_from(mrow), events=mine, started=started
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


class _IngestGroup:
    """Every inbound message queued at the writer, stored by one set-wise `_ingest_batch`."""

    def __init__(self, store: IngestRepo) -> None:
        self._store = store

    async def run_many(self, s: AsyncSession, items: Sequence[dict[str, Any]]) -> list[Ingested]:
        return await self._store._ingest_batch(s, now_ms(), items)
