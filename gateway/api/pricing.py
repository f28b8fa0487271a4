"""What WhatsApp conversations cost: per-message pricing counts per session and per agent."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.errors import BadRequest
from gateway.runtime import Runtime


def _int(request: Request, key: str) -> int | None:
    value = request.query_params.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"`{key}` must be an integer (epoch ms)", code="invalid_query") from None


class PricingRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/sessions/{session_id}/pricing", self.session, methods=["GET"]),
            Route("/v1/agents/{agent}/pricing", self.agent, methods=["GET"]),
        ]

    async def session(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        sid = request.path_params["session_id"]
        found = await self.rt.access.session(principal, sid)
        summary = await self.rt.store.pricing.summary(session_id=sid)
        return JSONResponse({"sessionId": sid, "agent": found.agent_id, **summary})

    async def agent(self, request: Request) -> JSONResponse:
        principal = await self.rt.access.key(request)
        agent_id = request.path_params["agent"]
        self.rt.access.agent(principal, agent_id)
        since, until = _int(request, "since"), _int(request, "until")
        summary = await self.rt.store.pricing.summary(agent_id=agent_id, since=since, until=until)
        return JSONResponse({"agent": agent_id, "since": since, "until": until, **summary})
