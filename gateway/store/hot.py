"""Hot state: each recently active session and its messages, kept between turns.

A turn needs the session (agent, contact, pause state, context) and its messages
(history and the pending ones). Reading them from the database on every turn cost two
statements and, for a long conversation, the whole history each time. Instead the store
keeps them here, and the writes that change them update them.

The rule that keeps this correct, also with several processes on one database:

- Every write to a session row or to its messages bumps `sessions.version` in the same
  transaction (`bump` below, or the `version + 1` of the hot paths).
- An entry remembers the version it reflects. A write of this process that knows the
  version it changed from (an inbound message, a reply) updates the entry only when that
  version is the entry's, i.e. nobody else wrote in between; otherwise it drops the
  entry. Any other write of this process drops the entries of the sessions it touched.
- Updates are applied after the commit (the writer's `after_commit` hooks, in commit
  order), never from inside a transaction that might still roll back.
- So a write by another process is noticed at this process's next write to the session,
  at the latest when the next inbound message is stored. A turn starts from the state
  its own inbound message committed, which is as fresh as a read at that moment would
  have been. Readers that answer people (API routes) still read the database.

Entries are bounded (least recently used go first); a miss costs the two reads it
replaces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gateway.store.records import MessageRecord, SessionRecord

MAX_SESSIONS = 2048


@dataclass(slots=True)
class Hot:
    session: SessionRecord
    messages: list[MessageRecord]
    version: int


class HotSessions:
    def __init__(self, size: int = MAX_SESSIONS) -> None:
        self._size = size
        self._entries: OrderedDict[str, Hot] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, session_id: str) -> Hot | None:
        entry = self._entries.get(session_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(session_id)
        return entry

    def put(self, session: SessionRecord, messages: Sequence[MessageRecord], version: int) -> None:
        self._entries[session.id] = Hot(session=session, messages=list(messages), version=version)
        self._entries.move_to_end(session.id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def version_of(self, session_id: str) -> int | None:
        """The version an entry reflects (None: no entry); not counted as a hit or a miss."""
        entry = self._entries.get(session_id)
        return None if entry is None else entry.version

    def drop(self, session_ids: Iterable[str]) -> None:
        for sid in session_ids:
            self._entries.pop(sid, None)

    def clear(self) -> None:
        self._entries.clear()

    def ingested(
        self, session: SessionRecord, message: MessageRecord, before: int, after: int, *, started: bool
    ) -> None:
        """A user message this process stored (the session went from `before` to `after`)."""
        if started:
            self.put(session, [message], after)
            return
        entry = self._entries.get(session.id)
        if entry is None:
            return
        if entry.version != before:
            self.drop([session.id])
            return
        entry.session, entry.version = session, after
        entry.messages.append(message)

    def replied(
        self,
        session_id: str,
        before: int,
        after: int,
        *,
        added: Sequence[MessageRecord],
        answered: Iterable[str],
        last_message_at: int | None,
    ) -> None:
        """A turn's outcome this process stored: new messages, user messages answered."""
        entry = self._entries.get(session_id)
        if entry is None:
            return
        if entry.version != before:
            self.drop([session_id])
            return
        done = set(answered)
        if done:
            entry.messages = [replace(m, pending=False) if m.id in done else m for m in entry.messages]
        entry.messages.extend(added)
        if last_message_at is not None:
            entry.session = replace(entry.session, last_message_at=last_message_at)
        entry.version = after
