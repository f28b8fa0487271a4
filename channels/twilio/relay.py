"""One ConversationRelay WebSocket: a live phone call of one session.

Twilio does the speech; this connection turns its `prompt`s into user turns and
the session's bus events into `text` tokens. One task group per socket (a reader,
a writer, the call-limit watchdog and a shutdown watcher); control frames from
agents and the API go out through `send`, serialized with the writer's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from channels.twilio import relay_protocol as rp
from gateway.bus.base import Subscription, SubscriptionClosed
from gateway.codec import bounded, decode_event, dumps
from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.errors import GatewayError
from gateway.events import (
    BotCancelled,
    BotMessage,
    BotStreamEnd,
    BotToken,
    Event,
    InboundMessage,
    SessionEnded,
    SessionError,
    now_ms,
)
from gateway.settings import PhoneConfig
from gateway.store.records import SessionRecord
from gateway.store.sql import Store
from gateway.tasks import first_completed
from gateway.types import Channel, EventType

log = logging.getLogger("gateway.twilio.relay")

MAX_RECORDED_BAD_FRAMES = 20  # per call: enough to debug, never a flood of events
SPEECH_CHARS_PER_SECOND = 15.0  # to wait for a goodbye to be spoken before `end`
MAX_SPEECH_WAIT = 10.0
# Application reconnect: Twilio replays what it buffered right after the new `setup`. A final
# prompt in this first stretch of a reconnected socket that repeats a caller message the call
# already stored (within REPLAY_LOOKBACK_MS before the reconnect) is a replay: not said twice.
REPLAY_SECONDS = 5.0
CONFIG_UPDATED = "call.configUpdated"  # Twilio confirmed a mid-call configuration change
REPLAY_LOOKBACK_MS = 120_000


class RelayConnection:
    def __init__(
        self,
        ws: WebSocket,
        session: SessionRecord,
        *,
        directory: AgentDirectory,
        service: ConversationService,
        stopping: asyncio.Event,
        store: Store,
        call_sid: str,
        answered_at_ms: int,
        on_finish: Callable[[str, str, dict[str, Any] | None], Awaitable[None]],
    ) -> None:
        self.ws = ws
        self.directory = directory
        self.service = service
        self.stopping = stopping
        self.store = store
        self.session = session
        self.sid = session.id
        self.call_sid = call_sid
        self.phone: PhoneConfig = directory.get(session.agent_id).phone
        self.answered_at_ms = answered_at_ms
        self._on_finish = on_finish
        self._send_lock = asyncio.Lock()
        # The reply Twilio is saying (or last said): an interrupt cuts this one.
        self.speaking: str | None = None
        self._streamed: dict[str, list[str]] = {}  # message id -> tokens sent
        self._open_cycle: str | None = None  # a reply whose `last: true` is still owed
        # A reply fully said but not stored yet (between `bot.streamEnd` and `bot.message`).
        self.storing: str | None = None
        # Replies the caller cut off: their deltas still queued on the bus must not be said.
        self._cut: set[str] = set()
        self._partial = ""
        self._bad_frames = 0
        self._idle = 0.0
        self._warned = False
        self._final_warned = False
        self.ended = False  # an `end` went out (or the session ended): nothing more is said
        # An action to run once the reply being spoken is complete (endCall from a tool).
        self.after_reply: tuple[str, dict[str, Any]] | None = None
        self._after_reply_task: asyncio.Task[None] | None = None
        # Set on a reconnected socket: (monotonic end of the replay stretch, stored caller
        # messages a replayed prompt may repeat: id -> text).
        self._replay: tuple[float, dict[str, str]] | None = None
        self.replays_ignored = 0

    async def expect_replay(self) -> None:
        """This socket replaces a dropped one: recognise the replayed prompts."""
        since = now_ms() - REPLAY_LOOKBACK_MS
        recent = {
            m.id: m.text.strip()
            for m in await self.store.messages(self.sid)
            if m.role == "user" and m.created_at >= since and m.text.strip()
        }
        if recent:
            self._replay = (time.monotonic() + REPLAY_SECONDS, recent)

    def _replayed(self, text: str) -> bool:
        if self._replay is None:
            return False
        until, recent = self._replay
        if time.monotonic() > until:
            self._replay = None
            return False
        match = next((mid for mid, said in recent.items() if said == text), None)
        if match is None:
            return False
        del recent[match]  # each stored message absorbs one replay at most
        return True

    # ---------------------------------------------------------------- sending

    async def send(self, frame: dict[str, Any]) -> bool:
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await self.ws.send_text(dumps(frame))
            except Exception:  # the peer went away mid-send; the reader notices
                return False
            return True

    async def end(self, handoff: dict[str, Any]) -> None:
        """Tell Twilio to end the relay session; `handoff` comes back in the action callback."""
        if self.ended:
            return
        self.ended = True
        await self.send(rp.end(handoff))
        # The socket closes (with a close frame) once the session's end is stored: see the
        # writer's `session.ended`. Closing here would cancel the caller storing it.

    async def close(self, code: int = 1000, reason: str = "relay session ended") -> None:
        """A proper close frame after `end` (a dropped TCP connection reads as 1006 at Twilio)."""
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.ws.close(code, reason)
            except Exception:  # the peer closed first: nothing left to say
                pass

    # ------------------------------------------------------------------- run

    async def run(self, sub: Subscription) -> None:
        await first_completed(self._reader(), self._writer(sub), self._watchdog(), self._stopping())

    async def _stopping(self) -> None:
        await self.stopping.wait()
        # Twilio calls the action URL; the restarted gateway can reconnect the call there.
        await self.ws.close(1001, "server shutting down")

    async def _reader(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            raw = msg.get("text")
            if raw is None:
                raw = msg.get("bytes") or b""
            try:
                frame = rp.parse_frame(raw)
            except rp.FrameError as exc:
                await self._bad_frame(str(exc))
                continue
            try:
                await self._handle(frame)
            except GatewayError as exc:  # e.g. the session ended under us: the call goes on
                log.info("relay frame not applied: %s", exc.message, extra={"session_id": self.sid})
            except (WebSocketDisconnect, OSError):
                raise
            except Exception:  # a bug must not end a live call: log it and listen on
                log.exception("relay frame failed", extra={"session_id": self.sid})

    async def _bad_frame(self, problem: str) -> None:
        self._bad_frames += 1
        log.warning("malformed relay frame: %s", problem, extra={"session_id": self.sid})
        if self._bad_frames <= MAX_RECORDED_BAD_FRAMES:
            await self._event(EventType.SESSION_ERROR, {"code": "bad_relay_frame", "message": problem})

    async def _handle(self, frame: rp.Frame) -> None:
        if isinstance(frame, rp.Prompt):
            self._activity()
            if not frame.last:
                self._partial = frame.text  # partial prompts carry the utterance so far
                return
            text, self._partial = (frame.text or self._partial).strip(), ""
            if not text:
                return
            if self._replayed(text):
                self.replays_ignored += 1
                log.info("replayed prompt ignored after a reconnect", extra={"session_id": self.sid})
                return
            meta = {"lang": frame.lang} if frame.lang else None
            await self.service.receive(
                InboundMessage(
                    agent=self.session.agent_id,
                    channel=Channel.PHONE,
                    session_id=self.sid,
                    contact=None,
                    text=text,
                    message_meta=meta or {},
                )
            )
        elif isinstance(frame, rp.Interrupt):
            message_id, self.speaking = self.speaking, None
            if message_id is not None:
                self._cut.add(message_id)
                self._close_cycle(message_id)
            await self.service.interrupt(
                self.sid,
                message_id,
                frame.spoken,
                data={"durationUntilInterruptMs": frame.duration_ms},
            )
        elif isinstance(frame, rp.Dtmf):
            self._activity()
            await self._event(EventType.CALL_DTMF, {"digit": frame.digit})
        elif isinstance(frame, rp.RelayError):
            log.warning("ConversationRelay error: %s", frame.description, extra={"session_id": self.sid})
            await self._event(EventType.SESSION_ERROR, {"code": "relay_error", "message": frame.description})
        elif isinstance(frame, rp.ConfigUpdated):
            await self._event(CONFIG_UPDATED, {"settings": bounded(frame.fields, 4096)})
        elif isinstance(frame, rp.Setup):
            log.info("a second setup on one relay socket ignored", extra={"session_id": self.sid})
        else:
            log.debug("relay message %r ignored", frame.type, extra={"session_id": self.sid})

    def _activity(self) -> None:
        # Only the caller's own speech (or keys) resets the idle clock.
        self._idle = 0.0
        self._warned = self._final_warned = False

    async def _event(self, type_: EventType | str, data: dict[str, Any]) -> None:
        await self.service.record_events(
            [Event(type=type_, agent=self.session.agent_id, session_id=self.sid, channel="phone", data=data)]
        )

    # ---------------------------------------------------------------- writer

    async def _writer(self, sub: Subscription) -> None:
        while True:
            try:
                raw = await sub.get()
            except SubscriptionClosed:
                # Fell behind (should not happen at speech rates): the call goes on, the
                # reply in flight may be cut; closing would hang up on the caller.
                log.warning("relay fell behind its session feed", extra={"session_id": self.sid})
                return
            match decode_event(raw):
                case BotToken(message_id=mid, text=text):
                    if self.ended or mid in self._cut:
                        continue
                    self.speaking = self._open_cycle = mid
                    self._streamed.setdefault(mid, []).append(text)
                    await self.send(rp.text(text, False))
                case BotMessage() as message:
                    await self._bot_message(message)
                case BotStreamEnd(message_id=mid):
                    if self._open_cycle == mid:
                        self._open_cycle = None
                        self.storing = mid
                        await self.send(rp.text("", True))
                case BotCancelled(message_id=mid):
                    if self._open_cycle == mid:
                        self._open_cycle = None
                        await self.send(rp.text("", True))
                case SessionError(in_reply_to=in_reply_to):
                    # A failed turn (it names the message it answered): say something rather than nothing.
                    if in_reply_to and self.phone.error_message and not self.ended:
                        self._open_cycle = None
                        await self.send(rp.text(self.phone.error_message, True))
                case SessionEnded(reason=reason):
                    if not self.ended:
                        self.ended = True
                        await self.send(rp.end({"reason": reason}))
                    await self.close()
                    return

    async def _bot_message(self, m: BotMessage) -> None:
        mid = m.message_id
        if self.storing == mid:
            self.storing = None
        if self.ended or m.greeting or m.interrupted:
            if m.greeting:
                self.speaking = mid  # Twilio says the welcome greeting itself
            return
        text = m.text
        if m.source == "human" or mid not in self._streamed:
            # An operator's words, or a reply that came whole (no deltas): say it in one go.
            if text.strip():
                self.speaking = mid
                await self.send(rp.text(text, True))
        elif self._open_cycle == mid:
            self._open_cycle = None
            await self.send(rp.text("", True))
        self._streamed.pop(mid, None)
        if self.after_reply is not None and m.source != "human":
            action, args = self.after_reply
            self.after_reply = None
            wait = min(MAX_SPEECH_WAIT, len(text) / SPEECH_CHARS_PER_SECOND)
            self._after_reply_task = asyncio.create_task(self._later(wait, action, args))

    async def _later(self, seconds: float, action: str, args: dict[str, Any]) -> None:
        await asyncio.sleep(seconds)
        try:
            await self._on_finish(action, self.sid, args)
        except GatewayError as exc:  # e.g. the caller hung up first and Twilio refused the update
            log.warning("%s after the reply failed: %s", action, exc.message, extra={"session_id": self.sid})

    def _close_cycle(self, message_id: str) -> None:
        if self._open_cycle == message_id:
            self._open_cycle = None

    def streamed_text(self) -> tuple[str | None, str]:
        """The reply being streamed when the socket dropped, and what of it went out."""
        mid = self._open_cycle
        return mid, "".join(self._streamed.get(mid, [])) if mid else ""

    # -------------------------------------------------------------- watchdog

    async def _watchdog(self) -> None:
        """Call limits: max duration, and idle timeout with warnings and a grace period.

        Idle time only accrues while no reply is being produced: the agent talking
        pauses the clock, only the caller's speech resets it (product docs).
        """
        phone = self.phone
        idle_limit = phone.idle_timeout_seconds
        tick = max(0.05, min(1.0, (idle_limit or 10.0) / 20))
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            dt, last = now - last, now
            if self.ended:
                return
            if phone.max_duration_seconds and (
                now_ms() - self.answered_at_ms >= phone.max_duration_seconds * 1000
            ):
                await self._on_finish("timeout", self.sid, {"reason": "max_duration"})
                return
            if not idle_limit or self.service.turns.busy(self.sid):
                continue
            self._idle += dt
            warn_at = max(0.0, idle_limit - phone.idle_warning_seconds)
            if phone.idle_warning_seconds and not self._warned and self._idle >= warn_at:
                self._warned = True
                await self._idle_warning(idle_limit - self._idle)
            if not self._final_warned and self._idle >= idle_limit:
                self._final_warned = True
                self._warned = True
                await self._idle_warning(phone.idle_grace_seconds, final=True)
            if self._idle >= idle_limit + phone.idle_grace_seconds:
                await self._on_finish("timeout", self.sid, {"reason": "idle_timeout"})
                return

    async def _idle_warning(self, remaining: float, *, final: bool = False) -> None:
        data: dict[str, Any] = {
            "remainingSeconds": round(max(0.0, remaining), 1),
            "idleTimeoutSeconds": self.phone.idle_timeout_seconds,
        }
        if final:
            data["final"] = True
        await self._event(EventType.SESSION_IDLE_WARNING, data)
        if self.phone.idle_message and not self.service.turns.busy(self.sid):
            await self.send(rp.text(self.phone.idle_message, True))
