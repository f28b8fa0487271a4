"""What WhatsApp conversations cost: per-message pricing counts per session and per agent."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway.access import Access
from gateway.api.models import PricingQuery
from gateway.api.operation import ApiRoute, parse_query
from gateway.store.sql import Store


class PricingRoutes:
    def __init__(self, *, access: Access, store: Store) -> None:
        self.access = access
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/sessions/{session_id}/pricing",
                self.session,
                method="GET",
                summary="What the session's sent WhatsApp messages cost: counts by pricing category and type",
                errors=(401, 404),
            ),
            ApiRoute(
                "/v1/agents/{agent}/pricing",
                self.agent,
                method="GET",
                summary="What the agent's sent WhatsApp messages cost: counts by pricing category and type",
                query=PricingQuery,
                errors=(401, 403, 404),
            ),
        ]

    async def session(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        sid = request.path_params["session_id"]
        found = await self.access.session(principal, sid)
        summary = await self.store.pricing.summary(session_id=sid)
        return JSONResponse({"sessionId": sid, "agent": found.agent_id, **summary})

    async def agent(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        agent_id = request.path_params["agent"]
        self.access.agent(principal, agent_id)
        q = parse_query(request, PricingQuery)
        since, until = q.since, q.until
        summary = await self.store.pricing.summary(agent_id=agent_id, since=since, until=until)
        return JSONResponse({"agent": agent_id, "since": since, "until": until, **summary})
