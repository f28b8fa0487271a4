"""`POST /v1/tokens`: short-lived single-use browser tokens (PROTOCOL §4)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.api.http import opt_dict, opt_str, read_json
from gateway.auth import TOKEN_CHANNELS, origin_allowed
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.runtime import Runtime


class TokenRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/tokens", self.create, methods=["POST"])]

    async def create(self, request: Request) -> JSONResponse:
        rt = self.rt
        body = await read_json(request, 16_384)
        channel = body.get("channel", "chat")
        if channel not in TOKEN_CHANNELS:
            raise BadRequest('`channel` must be "chat" or "stream"', code="invalid_channel")
        agent = opt_str(body, "agent", max_len=64)
        if agent is None:
            raise BadRequest("`agent` is required", code="missing_agent")
        metadata = opt_dict(body, "metadata")
        session_id = opt_str(body, "sessionId", max_len=64)
        config = rt.directory.get(agent)
        if "authorization" in request.headers:
            principal = await rt.auth.api_key(request.headers)
            principal.check(agent)
        else:
            origin = request.headers.get("origin")
            if not origin:
                raise Forbidden(
                    "send an API key, or call from a page whose Origin the agent allows",
                    code="origin_required",
                )
            if not origin_allowed(origin, config.allowed_origins):
                raise Forbidden(
                    f"origin {origin!r} is not in the allowed origins of {agent!r}", code="origin_not_allowed"
                )
        if session_id is not None:
            session = await rt.store.session(session_id)
            if session is None or session.agent_id != agent:
                raise NotFound(f"no session {session_id!r} for agent {agent!r}", code="unknown_session")
        token = await rt.auth.mint(channel=channel, agent=agent, metadata=metadata, session_id=session_id)
        server = (rt.settings.server.public_url or str(request.base_url)).rstrip("/")
        headers = {}
        origin = request.headers.get("origin")
        if origin and origin_allowed(origin, config.allowed_origins):
            headers = {"access-control-allow-origin": origin, "vary": "Origin"}
        return JSONResponse(
            {"token": token, "server": server, "expiresIn": rt.auth.ttl_seconds},
            status_code=201,
            headers=headers,
        )
