"""Session history: list, read, erase (PROTOCOL §5)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway import sanitizer
from gateway.access import Access
from gateway.api.models import INT64_MAX, INT64_MIN, SessionListQuery
from gateway.api.operation import ApiRoute, parse_query
from gateway.conversations import ConversationService
from gateway.errors import BadRequest
from gateway.sanitizer import clean_json
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import SessionQuery, Store


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
        # JSON columns are cleaned on the way out too: rows stored before the edges made text
        # safe (gateway/sanitizer.py) must not break a list, a read or an export.
        "metadata": clean_json({k: v for k, v in s.meta.items() if k != "attention"}),
        "attention": clean_json(s.meta.get("attention")),
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
        out["parts"] = clean_json(m.parts)
    if m.provider_message_id:
        out["providerMessageId"] = m.provider_message_id
    if m.status:
        out["status"] = m.status
    if m.in_reply_to:
        out["inReplyTo"] = m.in_reply_to
    if m.author:
        out["author"] = m.author
    if m.error:
        out["error"] = clean_json(m.error)
    if m.meta:
        out["meta"] = clean_json(m.meta)
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
        at, sep, sid = base64.urlsafe_b64decode(value.encode() + b"==").decode().partition(":")
        started = int(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid `cursor`", code="invalid_cursor") from None
    # A cursor is ours, but a client can forge one: it must fit the columns it is compared with.
    if not sep or not INT64_MIN <= started <= INT64_MAX or len(sid) > 64 or sanitizer.problem(sid):
        raise BadRequest("invalid `cursor`", code="invalid_cursor")
    return started, sid


class SessionRoutes:
    def __init__(self, *, access: Access, service: ConversationService, store: Store) -> None:
        self.access = access
        self.service = service
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/sessions",
                self.list,
                method="GET",
                summary="List sessions (keyset pagination)",
                query=SessionListQuery,
                errors=(401,),
            ),
            ApiRoute(
                "/v1/sessions/{session_id}",
                self.get,
                method="GET",
                summary="A session with its transcript and messages",
                errors=(401, 404),
            ),
            ApiRoute(
                "/v1/sessions/{session_id}",
                self.delete,
                method="DELETE",
                summary="Erase a session's content, leaving a tombstone",
                errors=(401, 404),
            ),
        ]

    async def list(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        q = parse_query(request, SessionListQuery)
        limit = q.limit
        query = SessionQuery(
            agent=q.agent,
            agents=self.access.visible(principal),
            contact=q.contact,
            channel=q.channel,
            status=q.status,
            paused=None if q.paused is None else q.paused.lower() in ("1", "true", "yes"),
            since=q.since,
            until=q.until,
            limit=limit + 1,
            cursor=_cursor(q.cursor),
        )
        rows = await self.store.sessions(query)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = (
                base64.urlsafe_b64encode(f"{last.started_at}:{last.id}".encode()).decode().rstrip("=")
            )
        newest = await self.store.last_messages([s.id for s in rows])
        sessions = [{**session_json(s), "lastMessage": _preview(newest.get(s.id))} for s in rows]
        return JSONResponse({"sessions": sessions, "nextCursor": next_cursor})

    async def get(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        session = await self.access.session(principal, request.path_params["session_id"])
        messages = await self.store.messages(session.id)
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
        principal = await self.access.key(request)
        session = await self.access.session(principal, request.path_params["session_id"])
        erased = await self.service.erase_session(session.id, by=principal.name)
        return JSONResponse(
            {"sessionId": erased.id, "status": erased.status, "reason": erased.end_reason, "erased": True}
        )
