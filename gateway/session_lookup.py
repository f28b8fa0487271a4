"""Reading one session or refusing it as missing: shared by every part of the service."""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.store.records import SessionRecord
from gateway.store.sql import Store


class SessionLookup:
    store: Store

    async def session(self, session_id: str) -> SessionRecord:
        session = await self.store.session(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session
