"""The chat WebSocket: one browser tab talking to one session."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from channels.chat.protocol import FrameError, Ping, SetContext, UserText, parse_client_frame
from gateway import sanitizer
from gateway.auth import Auth
from gateway.bus.base import SubscriptionClosed
from gateway.bus.facade import Bus
from gateway.codec import decode_event, dumps
from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.errors import GatewayError, Unauthorized
from gateway.events import (
    BotMessage,
    BotToken,
    ContactRef,
    InboundMessage,
    SessionEnded,
    SessionError,
    SessionIdleWarning,
    SessionTimeout,
)
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from gateway.store.sql import Store
from gateway.tasks import first_completed
from gateway.types import Channel

log = logging.getLogger("gateway.chat")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013


class ChatChannel:
    def __init__(
        self,
        *,
        auth: Auth,
        bus: Bus,
        directory: AgentDirectory,
        metrics: Metrics,
        service: ConversationService,
        settings: Settings,
        stopping: asyncio.Event,
        store: Store,
    ) -> None:
        self.auth = auth
        self.bus = bus
        self.directory = directory
        self.metrics = metrics
        self.service = service
        self.settings = settings
        self.stopping = stopping
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/chat/ws", self.endpoint)]

    async def endpoint(self, ws: WebSocket) -> None:
        gauge = self.metrics.websockets.labels("chat")
        gauge.inc()
        try:
            await self._serve(ws)
        except WebSocketDisconnect:
            pass
        finally:
            gauge.dec()

    async def _serve(self, ws: WebSocket) -> None:
        # Accept first, then close with 4000 + status: browsers can read a close code,
        # never a rejected handshake's HTTP status.
        await ws.accept()
        try:
            token = await self.auth.redeem(ws.query_params.get("token"), "chat")
        except Unauthorized as exc:
            await ws.close(4401, exc.message)
            return
        if self.directory.find(token.agent_id) is None:
            await ws.close(4404, f"unknown agent {token.agent_id!r}")
            return
        resumed = token.session_id is not None
        if token.session_id is not None:
            found = await self.store.session(token.session_id)
            if found is None or found.agent_id != token.agent_id:
                await ws.close(4404, "unknown session")
                return
            if not found.active:
                await ws.close(4409, "this session has ended")
                return
            session = found
        else:
            # POST /v1/tokens refuses unsafe metadata; a token minted before it did is made safe.
            meta = sanitizer.clean_json(token.meta)
            user = meta.get("userId")
            contact = None
            if isinstance(user, str | int) and str(user) and len(str(user)) <= sanitizer.MAX_ID:
                name = meta.get("name")
                contact = ContactRef(
                    channel=Channel.CHAT,
                    address=str(user),
                    name=sanitizer.clip(name, sanitizer.MAX_NAME) if isinstance(name, str) else None,
                )
            session = await self.service.start_session(
                agent_id=token.agent_id, channel=Channel.CHAT, contact=contact, metadata=meta
            )
        await ChatConnection(ws, self, session).run(resumed=resumed)


class ChatConnection:
    def __init__(self, ws: WebSocket, channel: ChatChannel, session: SessionRecord) -> None:
        self.ws = ws
        self.channel = channel
        self.session = session
        self.config = channel.directory.get(session.agent_id)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            await self.ws.send_text(dumps(frame))

    async def run(self, *, resumed: bool) -> None:
        ch, sid = self.channel, self.session.id
        async with ch.bus.subscribe_session(sid, ch.settings.server.chat_buffer_frames) as sub:
            started: dict[str, Any] = {
                "event": "chat.started",
                "sessionId": sid,
                "agent": self.session.agent_id,
            }
            if resumed:
                messages = await ch.store.messages(sid)
                started["history"] = [
                    {
                        "messageId": m.id,
                        "role": m.role,
                        "source": m.source,
                        "text": m.text,
                        "createdAt": m.created_at,
                    }
                    for m in messages
                    if m.role in ("user", "assistant") and m.text
                ]
                if any(m.pending for m in messages):
                    ch.service.turns.submit(sid)  # answer what was left unanswered
            await self.send(started)
            try:
                await first_completed(self._reader(), self._writer(sub), self._stopping())
            finally:
                if not ch.stopping.is_set():
                    # Nobody is listening any more: stop the reply (and its upstream stream).
                    # The user's message stays unanswered and is answered on reconnect.
                    ch.service.turns.cancel(sid)

    async def _stopping(self) -> None:
        await self.channel.stopping.wait()
        await self.ws.close(CLOSE_GOING_AWAY, "server shutting down")

    async def _reader(self) -> None:
        limits = self.config.limits
        max_bytes = self.channel.settings.server.max_frame_bytes
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            raw = msg.get("text")
            if raw is None:
                raw = msg.get("bytes") or b""
            try:
                frame = parse_client_frame(raw, max_text=limits.max_text_chars, max_bytes=max_bytes)
                await self._handle(frame)
            except FrameError as exc:
                await self.send({"event": "chat.error", "code": exc.code, "message": exc.message})
            except GatewayError as exc:
                await self.send({"event": "chat.error", "code": exc.code, "message": exc.message})
            except (WebSocketDisconnect, OSError):
                raise
            except Exception:
                # A bug must not cost the visitor the conversation: say so, log it, read on.
                log.exception("chat frame failed", extra={"session_id": self.session.id})
                await self.send({"event": "chat.error", "code": "internal", "message": "internal error"})

    async def _handle(self, frame: UserText | SetContext | Ping) -> None:
        if isinstance(frame, Ping):
            await self.send({"event": "pong"})
        elif isinstance(frame, SetContext):
            await self.channel.service.set_context(self.session.id, frame.key, frame.value)
        else:
            await self.channel.service.receive(
                InboundMessage(
                    agent=self.session.agent_id,
                    channel=Channel.CHAT,
                    session_id=self.session.id,
                    contact=None,
                    text=frame.text,
                )
            )

    async def _writer(self, sub: Any) -> None:
        while True:
            try:
                raw = await sub.get()
            except SubscriptionClosed as exc:
                if exc.overflowed:
                    await self.ws.close(CLOSE_TRY_AGAIN, "client fell behind; reconnect to resume")
                return
            match decode_event(raw):
                case BotToken(message_id=mid, text=text):
                    await self.send({"event": "chat.token", "messageId": mid, "text": text})
                case BotMessage(message_id=mid, text=text, source="human"):
                    await self.send(
                        {"event": "chat.message", "messageId": mid, "text": text, "source": "human"}
                    )
                case BotMessage(message_id=mid, text=text):
                    await self.send({"event": "chat.done", "messageId": mid, "text": text})
                case SessionError(code=code, message=message):
                    await self.send(
                        {"event": "chat.error", "code": code or "agent_error", "message": message or ""}
                    )
                case SessionIdleWarning(data=data):
                    warning = {
                        k: data[k] for k in ("remainingSeconds", "idleTimeoutSeconds", "final") if k in data
                    }
                    await self.send({"event": "chat.idleWarning", **warning})
                case SessionTimeout(reason=reason):
                    await self.send({"event": "chat.timeout", "reason": reason})
                case SessionEnded(reason=reason):
                    await self.send({"event": "chat.ended", "reason": reason})
                    await self.ws.close(1000, "session ended")
                    return
