"""Session limits that end sessions on time: idle timeout, WhatsApp's 24-hour window, stale calls.

The deadlines are data (derived from the stored `last_message_at` and
`last_inbound_at`), so a restart loses none; one sweeper per process ends what is
due, through the conversation service (which emits `session.ended`).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.events import now_ms
from gateway.store.records import SessionRecord
from gateway.store.sql import Store

log = logging.getLogger("gateway.limits")

WINDOW_MS = 24 * 3600 * 1000
CALL_SLACK_SECONDS = 120  # ringing time and late callbacks before an unclosed call is swept


def whatsapp_window_open(session: SessionRecord, now_ms: int) -> bool:
    """WhatsApp's customer-service window (Cloud API and via Twilio): free-form messages only
    within 24 h of the contact's last message, and not after a window error (131047/63016)
    until the contact writes again."""
    last = session.last_inbound_at
    if last is None or now_ms - last >= WINDOW_MS:
        return False
    return session.window_closed_at is None or session.window_closed_at < last


class SessionLimits:
    def __init__(
        self, store: Store, service: ConversationService, directory: AgentDirectory, sweep_seconds: float
    ) -> None:
        self._store = store
        self._service = service
        self._directory = directory
        self._sweep = sweep_seconds

    async def sweep(self) -> int:
        ended = 0
        now = now_ms()
        for agent_id in self._directory.ids():
            config = self._directory.get(agent_id)
            due = await self._store.expired_sessions(
                agent_id=agent_id,
                idle_before=now - config.limits.idle_timeout_seconds * 1000,
                window_before=now - WINDOW_MS,
            )
            for session_id, reason in due:
                await self._service.end_session(session_id, reason)
                ended += 1
            limit = config.phone.max_duration_seconds
            if limit:
                # A live call stops itself at its limit; this catches calls whose relay never
                # came or whose end was never reported (a lost status callback).
                before = now - int((limit + CALL_SLACK_SECONDS) * 1000)
                for session_id in await self._store.stale_calls(agent_id=agent_id, started_before=before):
                    await self._service.end_session(session_id, "max_duration")
                    ended += 1
        return ended

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("session-limits sweep failed; will retry")
            await asyncio.sleep(self._sweep)
