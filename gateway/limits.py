"""Session limits that end sessions on time: idle timeout (with warnings and a grace period),
max duration, WhatsApp's 24-hour window, stale calls.

The deadlines are data: they follow from the stored `started_at`, `last_inbound_at`
(the user's last message: only the user resets the idle clock, so an agent that
answers a warning does not keep a session alive) and the `session.idleWarning`
events already stored for the current idle period. A restart therefore loses no
timer and repeats no warning; one sweeper acts on what is due, every
`server.limits_sweep_seconds`: in the leading process when there are several
(gateway/leadership.py).

For every session but phone calls (those have their own watchdog on the relay socket):

    user's last message ──(idle_timeout - idle_warning)── session.idleWarning {remainingSeconds}
        ──(idle_warning)── idle timeout: session.idleWarning {final: true, remainingSeconds: grace}
        ──(idle_grace)── session.timeout {reason: "idle_timeout"}, session.ended {reason: "idle_timeout"}
    started_at ──(max_duration)── session.timeout {reason: "max_duration"}, session.ended
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.events import Event, now_ms
from gateway.settings import LimitsConfig
from gateway.store.records import SessionRecord
from gateway.store.sql import LimitCandidate, SessionQuery, Store
from gateway.types import EventType

log = logging.getLogger("gateway.limits")

WINDOW_MS = 24 * 3600 * 1000
ECHO_PAUSE = "echoPause"  # session.meta set by the WhatsApp channel when an echo paused the AI
CALL_SLACK_SECONDS = 120  # ringing time and late callbacks before an unclosed call is swept


def whatsapp_window_open(session: SessionRecord, now_ms: int) -> bool:
    """WhatsApp's customer-service window (Cloud API and via Twilio): free-form messages only
    within 24 h of the contact's last message, and not after a window error (131047/63016)
    until the contact writes again."""
    last = session.last_inbound_at
    if last is None or now_ms - last >= WINDOW_MS:
        return False
    return session.window_closed_at is None or session.window_closed_at < last


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class SessionLimits:
    def __init__(
        self,
        store: Store,
        service: ConversationService,
        directory: AgentDirectory,
        sweep_seconds: float,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._service = service
        self._directory = directory
        self._sweep = sweep_seconds
        self._leads = leads  # several instances: only the leader sweeps (gateway/leadership.py)

    async def sweep(self) -> int:
        """Warn and end what is due now; returns how many sessions ended."""
        ended = 0
        now = now_ms()
        for agent_id in self._directory.ids():
            config = self._directory.get(agent_id)
            limits = config.limits
            idle, warn = limits.idle_timeout_seconds, limits.idle_warning_seconds
            due = await self._store.limit_candidates(
                agent_id=agent_id,
                idle_warn_before=now - _ms(max(0.0, idle - warn)) if idle else None,
                started_before=now - _ms(limits.max_duration_seconds)
                if limits.max_duration_seconds
                else None,
                window_before=now - WINDOW_MS,
            )
            for candidate in due:
                if await self._check(candidate, limits, now):
                    ended += 1
            await self._resume_after_echoes(agent_id, now)
            limit = config.phone.max_duration_seconds
            if limit:
                # A live call stops itself at its limit; this catches calls whose relay never
                # came or whose end was never reported (a lost status callback).
                before = now - int((limit + CALL_SLACK_SECONDS) * 1000)
                for session_id in await self._store.stale_calls(agent_id=agent_id, started_before=before):
                    await self._service.end_session(session_id, "max_duration")
                    ended += 1
        return ended

    async def _resume_after_echoes(self, agent_id: str, now: int) -> None:
        """WhatsApp coexistence: a contact paused because the business answered from the
        WhatsApp Business app goes back to the AI once `echo_resume_minutes` have passed."""
        paused = await self._store.sessions(
            SessionQuery(agent=agent_id, status="active", paused=True, limit=500)
        )
        for session in paused:
            pause = session.meta.get(ECHO_PAUSE)
            if not isinstance(pause, dict) or not isinstance(pause.get("until"), int):
                continue
            if pause["until"] > now or session.contact is None:
                continue
            await self._service.update_session(
                session.id, meta={k: v for k, v in session.meta.items() if k != ECHO_PAUSE}
            )
            await self._service.set_paused(agent_id, False, contact=session.contact.address, by="echo_resume")

    async def _check(self, c: LimitCandidate, limits: LimitsConfig, now: int) -> bool:
        """Act on one session past a threshold: True when it ended."""
        max_at = c.started_at + _ms(limits.max_duration_seconds) if limits.max_duration_seconds else None
        idle = limits.idle_timeout_seconds
        basis = c.last_inbound_at or c.started_at
        idle_at = basis + _ms(idle) if idle else None
        end_at = idle_at + _ms(limits.idle_grace_seconds) if idle_at is not None else None
        window_at = (
            c.last_inbound_at + WINDOW_MS
            if c.channel == "whatsapp" and c.last_inbound_at is not None
            else None
        )
        # Whichever limit passed first names the end.
        passed = [
            (at, reason)
            for at, reason in (
                (max_at, "max_duration"),
                (end_at, "idle_timeout"),
                (window_at, "window_expired"),
            )
            if at is not None and at <= now
        ]
        if passed:
            _, reason = min(passed)
            await self._end(c, reason, limits)
            return True
        if idle_at is None:
            return False
        warned = await self._store.events_after(
            0, session_id=c.id, types=[str(EventType.SESSION_IDLE_WARNING)]
        )
        current = [e for e in warned if e.ts >= basis]
        if now >= idle_at:
            if not any(e.data.get("final") for e in current):
                await self._warn(c, limits, (end_at or now) - now, final=True)
        elif limits.idle_warning_seconds and not current:
            await self._warn(c, limits, idle_at - now)
        return False

    async def _warn(
        self, c: LimitCandidate, limits: LimitsConfig, remaining_ms: int, *, final: bool = False
    ) -> None:
        data: dict[str, Any] = {
            "remainingSeconds": round(max(0, remaining_ms) / 1000, 1),
            "idleTimeoutSeconds": limits.idle_timeout_seconds,
        }
        if final:
            data["final"] = True
        await self._service.record_events(
            [
                Event(
                    type=EventType.SESSION_IDLE_WARNING,
                    agent=c.agent_id,
                    session_id=c.id,
                    channel=c.channel,
                    data=data,
                )
            ]
        )

    async def _end(self, c: LimitCandidate, reason: str, limits: LimitsConfig) -> None:
        if reason == "window_expired":
            await self._service.end_session(c.id, reason)
            return
        data: dict[str, Any] = {"reason": reason}
        if reason == "max_duration":
            data["maxDurationSeconds"] = limits.max_duration_seconds
        else:
            data["idleTimeoutSeconds"] = limits.idle_timeout_seconds
        notice = Event(
            type=EventType.SESSION_TIMEOUT, agent=c.agent_id, session_id=c.id, channel=c.channel, data=data
        )
        await self._service.end_session(c.id, reason, before=[notice])

    async def run(self) -> None:
        while True:
            if self._leads():
                try:
                    await self.sweep()
                except Exception:
                    log.exception("session-limits sweep failed; will retry")
            await asyncio.sleep(self._sweep)
