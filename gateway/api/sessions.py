"""Session history: list, read, erase (PROTOCOL §5)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.errors import BadRequest
from gateway.runtime import Runtime
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import SessionQuery

MAX_LIMIT = 200


def session_json(s: SessionRecord) -> dict[str, Any]:
    contact = None if s.contact is None else {"id": s.contact.address, "name": s.contact.name}
    ended = s.ended_at
    return {
        "sessionId": s.id,
        "agent": s.agent_id,
        "agentId": s.agent_id,
        "channel": s.channel,
        "direction": s.direction,
        "contact": contact,
        "status": s.status,
        "paused": s.paused,
        "startedAt": s.started_at,
        "lastMessageAt": s.last_message_at,
        "endedAt": ended,
        "duration": None if ended is None else round((ended - s.started_at) / 1000, 3),
        "reason": s.end_reason,
        "metadata": {k: v for k, v in s.meta.items() if k != "attention"},
        "attention": s.meta.get("attention"),
    }


def message_json(m: MessageRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messageId": m.id,
        "role": m.role,
        "source": m.source,
        "type": m.type,
        "text": m.text,
        "createdAt": m.created_at,
    }
    if m.parts:
        out["parts"] = m.parts
    if m.provider_message_id:
        out["providerMessageId"] = m.provider_message_id
    if m.status:
        out["status"] = m.status
    if m.in_reply_to:
        out["inReplyTo"] = m.in_reply_to
    if m.author:
        out["author"] = m.author
    if m.error:
        out["error"] = m.error
    if m.meta:
        out["meta"] = m.meta
    return out


PREVIEW_CHARS = 200


def _preview(m: MessageRecord | None) -> dict[str, Any] | None:
    """A list row's last message: enough for a preview line, never a whole long text."""
    if m is None:
        return None
    text = m.text if len(m.text) <= PREVIEW_CHARS else m.text[: PREVIEW_CHARS - 1] + "…"
    return {
        "messageId": m.id,
        "role": m.role,
        "source": m.source,
        "type": m.type,
        "text": text,
        "createdAt": m.created_at,
    }


def _cursor(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    try:
        at, _, sid = base64.urlsafe_b64decode(value.encode() + b"==").decode().partition(":")
        return int(at), sid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid `cursor`", code="invalid_cursor") from None


def _int(q: Any, key: str, default: int | None = None) -> int | None:
    value = q.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"`{key}` must be an integer", code="invalid_query") from None


class SessionRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/sessions", self.list, methods=["GET"]),
            Route("/v1/sessions/{session_id}", self.get, methods=["GET"]),
            Route("/v1/sessions/{session_id}", self.delete, methods=["DELETE"]),
        ]

    async def list(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        q = request.query_params
        limit = _int(q, "limit", 50)
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"`limit` must be between 1 and {MAX_LIMIT}", code="invalid_query")
        paused = q.get("paused")
        status = q.get("status")
        if status not in (None, "active", "ended"):
            raise BadRequest("`status` must be active or ended", code="invalid_query")
        query = SessionQuery(
            agent=q.get("agent") or None,
            agents=self.rt.access.visible(principal),
            contact=q.get("contact") or None,
            channel=q.get("channel") or None,
            status=status,
            paused=None if paused is None else paused.lower() in ("1", "true", "yes"),
            since=_int(q, "since"),
            until=_int(q, "until"),
            limit=limit + 1,
            cursor=_cursor(q.get("cursor")),
        )
        rows = await self.rt.store.sessions(query)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = (
                base64.urlsafe_b64encode(f"{last.started_at}:{last.id}".encode()).decode().rstrip("=")
            )
        newest = await self.rt.store.last_messages([s.id for s in rows])
        sessions = [{**session_json(s), "lastMessage": _preview(newest.get(s.id))} for s in rows]
        return JSONResponse({"sessions": sessions, "nextCursor": next_cursor})

    async def get(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        session = await self.rt.access.session(principal, request.path_params["session_id"])
        messages = await self.rt.store.messages(session.id)
        out = session_json(session)
        contact = session.contact.address if session.contact else None
        inbound = session.direction == "inbound"
        out["from"] = contact if inbound else session.agent_id
        out["to"] = session.agent_id if inbound else contact
        out["transcript"] = [
            {"role": m.role, "text": m.text, "source": m.source}
            for m in messages
            if m.role in ("user", "assistant") and m.text
        ]
        out["messages"] = [message_json(m) for m in messages]
        return JSONResponse(out)

    async def delete(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        session = await self.rt.access.session(principal, request.path_params["session_id"])
        erased = await self.rt.service.erase_session(session.id, by=principal.name)
        return JSONResponse(
            {"sessionId": erased.id, "status": erased.status, "reason": erased.end_reason, "erased": True}
        )
