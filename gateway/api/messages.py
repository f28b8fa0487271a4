"""`POST /v1/agents/{agent}/messages`: a web backend talks for its user (PROTOCOL §5).

The reply streams as SSE (`session`, `token`…, `done`) with `Accept: text/event-stream`,
otherwise the route answers `{sessionId, messageId, text}` once the reply is complete.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from gateway.access import Access
from gateway.api.http import error
from gateway.api.models import ContactObject, MessageRequest
from gateway.api.operation import ApiRoute, parse_body
from gateway.bus.base import Subscription, SubscriptionClosed
from gateway.bus.facade import Bus
from gateway.codec import decode_event
from gateway.conversations import ConversationService, check_text
from gateway.errors import Conflict, NotFound
from gateway.events import (
    BotCancelled,
    BotMessage,
    BotToken,
    ContactRef,
    InboundMessage,
    SessionEnded,
    SessionError,
    SessionPaused,
)
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from gateway.store.sql import SessionQuery, Store
from gateway.types import Channel

REPLY_TIMEOUT_SECONDS = 600.0


class MessageRoutes:
    def __init__(
        self, *, access: Access, bus: Bus, service: ConversationService, settings: Settings, store: Store
    ) -> None:
        self.access = access
        self.bus = bus
        self.service = service
        self.settings = settings
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/agents/{agent}/messages",
                self.post,
                method="POST",
                summary="Send a user message; the reply streams as SSE (Accept: text/event-stream) "
                "or returns as JSON",
                body=MessageRequest,
                errors=(401, 403, 404, 409, 413, 415, 502, 504),
            )
        ]

    async def post(self, request: Request) -> Response:
        agent = request.path_params["agent"]
        principal = await self.access.key(request)
        config = self.access.agent(principal, agent)
        body = await parse_body(request, MessageRequest, limit=self.settings.server.max_body_bytes)
        text = check_text(body.text, config.limits.max_text_chars)
        session_id = body.sessionId
        metadata = body.metadata or {}
        contact = _contact(body.contact)
        session = await self._session(agent, session_id, contact, metadata)
        # Subscribe before the message is stored, so no token of its reply is missed.
        sub_cm = self.bus.subscribe_session(session.id, 10_000)
        sub = await sub_cm.__aenter__()
        try:
            result = await self.service.receive(
                InboundMessage(
                    agent=agent,
                    channel=Channel.API,
                    contact=None,
                    session_id=session.id,
                    text=text,
                    metadata=metadata,
                )
            )
        except BaseException:
            await sub_cm.__aexit__(None, None, None)
            raise
        assert result.message is not None
        message_id = result.message.id
        if result.message.pending is False:  # paused: stored, no agent turn
            await sub_cm.__aexit__(None, None, None)
            return JSONResponse(
                {"sessionId": session.id, "messageId": message_id, "text": None, "paused": True},
                status_code=202,
            )
        if "text/event-stream" in request.headers.get("accept", ""):
            return EventSourceResponse(
                self._stream(sub_cm, sub, session.id, message_id),
                ping=int(self.settings.server.sse_ping_seconds),
            )
        try:
            async for kind, data in _reply(sub, message_id):
                if kind == "done":
                    return JSONResponse(
                        {"sessionId": session.id, "messageId": data["messageId"], "text": data["text"]}
                    )
                if kind == "cancelled":  # paused (a human took over) or interrupted
                    return JSONResponse(
                        {"sessionId": session.id, "messageId": None, "text": None, "cancelled": True},
                        status_code=202,
                    )
                if kind == "error":
                    return error(
                        502, data.get("code", "agent_error"), data.get("message", "the agent failed")
                    )
        finally:
            await sub_cm.__aexit__(None, None, None)
        return error(
            504, "reply_timeout", "no reply arrived in time; read it later from GET /v1/sessions/{id}"
        )

    async def _session(
        self, agent: str, session_id: str | None, contact: ContactRef | None, metadata: dict[str, Any]
    ) -> SessionRecord:
        if session_id is not None:
            session = await self.store.session(session_id)
            if session is None or session.agent_id != agent:
                raise NotFound(f"no session {session_id!r} for agent {agent!r}", code="unknown_session")
            if not session.active:
                raise Conflict(f"session {session_id} has ended", code="session_ended")
            return session
        if contact is not None:
            found = await self.store.sessions(
                SessionQuery(agent=agent, contact=contact.address, channel="api", status="active", limit=1)
            )
            if found:
                return found[0]
        return await self.service.start_session(
            agent_id=agent, channel=Channel.API, contact=contact, metadata=metadata
        )

    async def _stream(
        self, sub_cm: Any, sub: Subscription, session_id: str, message_id: str
    ) -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(
                event="session", data=json.dumps({"sessionId": session_id, "messageId": message_id})
            )
            async for kind, data in _reply(sub, message_id):
                yield ServerSentEvent(event=kind, data=json.dumps(data, ensure_ascii=False))
        finally:
            await sub_cm.__aexit__(None, None, None)


def _contact(value: str | ContactObject | None) -> ContactRef | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ContactRef(channel=Channel.API, address=value)
    return ContactRef(channel=Channel.API, address=value.id, name=value.name)


async def _reply(sub: Subscription, message_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The reply to one user message: `token`s, then `done` or `error`.

    The reply is the first turn whose `answered` list holds the message (a turn
    already running when it arrived answers earlier messages only). Tokens carry
    the last message their turn answers; message ids sort by creation, so a turn
    whose last answered id is not older than ours is the one answering ours.
    """
    reply_id: str | None = None
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_SECONDS):
            while True:
                match decode_event(await sub.get()):
                    case BotToken(message_id=mid, in_reply_to=in_reply_to, text=text):
                        if reply_id is None and (in_reply_to or "") >= message_id:
                            reply_id = mid  # ids sort by time: this turn includes ours
                        if mid == reply_id:
                            yield "token", {"messageId": mid, "text": text}
                    case BotMessage() as m:
                        if message_id in (m.answered if "answered" in m.data else (m.in_reply_to,)):
                            yield "done", {"messageId": m.message_id, "text": m.text}
                            return
                    case SessionError(code=code, message=msg, in_reply_to=in_reply_to, answered=answered):
                        if in_reply_to == message_id or message_id in answered:
                            yield "error", {"code": code, "message": msg}
                            return
                    case SessionEnded():
                        yield "error", {"code": "session_ended", "message": "the session ended"}
                        return
                    case SessionPaused(by=by):  # a human took over before the reply
                        if by != "agent":  # not the agent's own request_human
                            yield "cancelled", {"messageId": None}
                            return
                    case BotCancelled(message_id=mid, answered=answered):
                        if message_id in answered:
                            yield "cancelled", {"messageId": mid}
                            return
    except (TimeoutError, SubscriptionClosed):
        return
