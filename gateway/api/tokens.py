"""`POST /v1/tokens`: short-lived single-use browser tokens (PROTOCOL §4)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway.access import Access
from gateway.api.models import TokenRequest
from gateway.api.operation import ApiRoute, parse_body
from gateway.auth import Auth, origin_allowed
from gateway.directory import AgentDirectory
from gateway.errors import Forbidden, NotFound, RateLimited
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings
from gateway.store.sql import Store


class TokenRoutes:
    def __init__(
        self,
        *,
        access: Access,
        auth: Auth,
        directory: AgentDirectory,
        origin_mints: RateLimiter,
        settings: Settings,
        store: Store,
    ) -> None:
        self.access = access
        self.auth = auth
        self.directory = directory
        self.origin_mints = origin_mints
        self.settings = settings
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/tokens",
                self.create,
                method="POST",
                summary="Mint a single-use browser token (API key, or an allowed Origin)",
                body=TokenRequest,
                secured=False,
                ok=201,
                errors=(401, 403, 404, 413, 415, 429),
            )
        ]

    async def create(self, request: Request) -> JSONResponse:
        body = await parse_body(request, TokenRequest, limit=16_384)
        channel, agent, metadata, session_id = body.channel, body.agent, body.metadata or {}, body.sessionId
        if "authorization" in request.headers:
            # A chat token lets a browser talk (a write); a stream token only reads.
            principal = await self.access.key(request, write=channel == "chat")
            config = self.access.agent(principal, agent)
            if session_id is not None:
                session = await self.access.session(principal, session_id)
                if session.agent_id != agent:
                    raise NotFound(f"no session {session_id!r}", code="unknown_session")
        else:
            config = self.directory.get(agent)
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
            # Anyone can send any Origin header: the rate bounds what a script can mint.
            wait = self.origin_mints.take(origin.rstrip("/").lower())
            if wait is not None:
                raise RateLimited(f"too many tokens minted for origin {origin!r}", retry_after=wait)
            # A page opens only its own conversation: a chat, or the feed of one chat session
            # it holds the id of. A feed of a whole agent needs an API key.
            if channel == "stream" and session_id is None:
                raise Forbidden(
                    "a stream token minted through an allowed origin is for one session: send "
                    "`sessionId` (the feed of a whole agent needs an API key)",
                    code="session_required",
                )
            if session_id is not None:
                found = await self.store.session(session_id)
                if found is None or found.agent_id != agent or found.channel != "chat":
                    raise NotFound(f"no session {session_id!r}", code="unknown_session")
        token = await self.auth.mint(channel=channel, agent=agent, metadata=metadata, session_id=session_id)
        server = (self.settings.server.public_url or str(request.base_url)).rstrip("/")
        headers = {}
        origin = request.headers.get("origin")
        if origin and origin_allowed(origin, config.allowed_origins):
            headers = {"access-control-allow-origin": origin, "vary": "Origin"}
        return JSONResponse(
            {"token": token, "server": server, "expiresIn": self.auth.ttl_seconds},
            status_code=201,
            headers=headers,
        )
