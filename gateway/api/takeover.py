"""Human takeover over REST: pause / resume at three levels, messages sent as a human,
and a contact's sessions (PROTOCOL §5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway.access import Access
from gateway.api.models import AgentPauseRequest, HumanMessageRequest
from gateway.api.operation import ApiRoute, parse_body
from gateway.api.sessions import session_json
from gateway.conversations import ConversationService, check_text
from gateway.directory import AgentDirectory
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from gateway.store.sql import SessionQuery, Store


class TakeoverRoutes:
    def __init__(
        self,
        *,
        access: Access,
        directory: AgentDirectory,
        service: ConversationService,
        settings: Settings,
        store: Store,
    ) -> None:
        self.access = access
        self.directory = directory
        self.service = service
        self.settings = settings
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/sessions/{session_id}/pause",
                self.pause_session,
                method="POST",
                summary="Take over: pause the AI on this session",
                errors=(401, 404, 409),
            ),
            ApiRoute(
                "/v1/sessions/{session_id}/resume",
                self.resume_session,
                method="POST",
                summary="Hand back to the AI",
                errors=(401, 404, 409),
            ),
            ApiRoute(
                "/v1/sessions/{session_id}/messages",
                self.send,
                method="POST",
                summary="Send a message as a human on the session's channel",
                body=HumanMessageRequest,
                ok=201,
                errors=(401, 404, 409, 413, 415),
            ),
            ApiRoute(
                "/v1/agents/{agent}/pause",
                self.pause_agent,
                method="POST",
                summary="Pause an agent, or one contact with it (`contact`)",
                body=AgentPauseRequest,
                body_required=False,
                errors=(401, 403, 404, 413, 415),
            ),
            ApiRoute(
                "/v1/agents/{agent}/resume",
                self.resume_agent,
                method="POST",
                summary="Resume an agent (every level) or one contact",
                body=AgentPauseRequest,
                body_required=False,
                errors=(401, 403, 404, 413, 415),
            ),
            ApiRoute(
                "/v1/contacts/{contact}/sessions",
                self.contact_sessions,
                method="GET",
                summary="A contact's sessions",
                errors=(401,),
            ),
        ]

    async def _session(self, request: Request) -> tuple[SessionRecord, str]:
        principal = await self.access.key(request)
        session = await self.access.session(principal, request.path_params["session_id"])
        return session, principal.name

    async def pause_session(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        await self.service.set_paused(session.agent_id, True, session_id=session.id, by=who)
        return JSONResponse({"sessionId": session.id, "paused": True})

    async def resume_session(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        await self.service.set_paused(session.agent_id, False, session_id=session.id, by=who)
        return JSONResponse({"sessionId": session.id, "paused": False})

    async def send(self, request: Request) -> JSONResponse:
        session, who = await self._session(request)
        body = await parse_body(request, HumanMessageRequest, limit=self.settings.server.max_body_bytes)
        config = self.directory.get(session.agent_id)
        text = check_text(body.text, config.limits.max_text_chars)
        author = body.author or who
        message_id = await self.service.send_human(session.id, text, author=author, by=who)
        return JSONResponse(
            {"sessionId": session.id, "messageId": message_id, "source": "human", "author": author},
            status_code=201,
        )

    async def _agent(self, request: Request, paused: bool) -> JSONResponse:
        principal = await self.access.key(request)
        agent = request.path_params["agent"]
        self.access.agent(principal, agent)
        # An empty body (no contact) means the whole agent.
        contact = (await parse_body(request, AgentPauseRequest, limit=16_384)).contact
        changed = await self.service.set_paused(agent, paused, contact=contact, by=principal.name)
        out: dict[str, object] = {"agent": agent, "paused": paused, "sessions": changed}
        if contact is not None:
            out["contact"] = contact
        return JSONResponse(out)

    async def pause_agent(self, request: Request) -> JSONResponse:
        return await self._agent(request, True)

    async def resume_agent(self, request: Request) -> JSONResponse:
        return await self._agent(request, False)

    async def contact_sessions(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        visible = self.access.visible(principal)
        rows = await self.store.sessions(
            SessionQuery(contact=request.path_params["contact"], limit=200, agents=visible)
        )
        return JSONResponse({"sessions": [session_json(s) for s in rows]})
