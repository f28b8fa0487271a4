"""Human takeover over REST: pause / resume at three levels, messages sent as a human,
and a contact's sessions (PROTOCOL §5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.api.http import opt_str, read_body, read_json
from gateway.api.sessions import session_json
from gateway.conversations import check_text
from gateway.runtime import Runtime
from gateway.store.records import SessionRecord
from gateway.store.sql import SessionQuery


class TakeoverRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/sessions/{session_id}/pause", self.pause_session, methods=["POST"]),
            Route("/v1/sessions/{session_id}/resume", self.resume_session, methods=["POST"]),
            Route("/v1/sessions/{session_id}/messages", self.send, methods=["POST"]),
            Route("/v1/agents/{agent}/pause", self.pause_agent, methods=["POST"]),
            Route("/v1/agents/{agent}/resume", self.resume_agent, methods=["POST"]),
            Route("/v1/contacts/{contact}/sessions", self.contact_sessions, methods=["GET"]),
        ]

    async def _session(self, request: Request) -> tuple[SessionRecord, str]:
        principal = await self.rt.access.key(request)
        session = await self.rt.access.session(principal, request.path_params["session_id"])
        return session, principal.name

    async def pause_session(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        await self.rt.service.set_paused(session.agent_id, True, session_id=session.id, by=who)
        return JSONResponse({"sessionId": session.id, "paused": True})

    async def resume_session(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        await self.rt.service.set_paused(session.agent_id, False, session_id=session.id, by=who)
        return JSONResponse({"sessionId": session.id, "paused": False})

    async def send(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        body = await read_json(request, self.rt.settings.server.max_body_bytes)
        config = self.rt.directory.get(session.agent_id)
        text = check_text(body.get("text"), config.limits.max_text_chars)
        author = opt_str(body, "author", max_len=128) or who
        message_id = await self.rt.service.send_human(session.id, text, author=author, by=who)
        return JSONResponse(
            {"sessionId": session.id, "messageId": message_id, "source": "human", "author": author},
            status_code=201,
        )

    async def _agent(self, request: Request, paused: bool) -> JSONResponse:
        principal = await self.rt.access.key(request)
        agent = request.path_params["agent"]
        self.rt.access.agent(principal, agent)
        raw = await read_body(request, 16_384)  # an empty body (no contact) means the whole agent
        body = await read_json(request, 16_384, body=raw) if raw.strip() else {}
        contact = opt_str(body, "contact", max_len=128)
        changed = await self.rt.service.set_paused(agent, paused, contact=contact, by=principal.name)
        out: dict[str, object] = {"agent": agent, "paused": paused, "sessions": changed}
        if contact is not None:
            out["contact"] = contact
        return JSONResponse(out)

    async def pause_agent(self, request: Request) -> JSONResponse:
        return await self._agent(request, True)

    async def resume_agent(self, request: Request) -> JSONResponse:
        return await self._agent(request, False)

    async def contact_sessions(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        visible = self.rt.access.visible(principal)
        rows = await self.rt.store.sessions(
            SessionQuery(contact=request.path_params["contact"], limit=200, agents=visible)
        )
        return JSONResponse({"sessions": [session_json(s) for s in rows]})
