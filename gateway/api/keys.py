"""`POST/GET/DELETE /v1/keys`: API keys, for admin keys only (PROTOCOL §11).

A key is shown once, in the answer to its creation; only its SHA-256 is stored.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.api.http import opt_str, read_json
from gateway.errors import BadRequest, NotFound
from gateway.runtime import Runtime
from gateway.store.records import ApiKeyRecord

SLUG = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def key_json(k: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "admin": k.admin,
        "tenant": k.tenant,
        "agents": k.agents,
        "readOnly": k.read_only,
        "createdAt": k.created_at,
        "lastUsedAt": k.last_used_at,
        "revokedAt": k.revoked_at,
    }


class KeyRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/keys", self.create, methods=["POST"]),
            Route("/v1/keys", self.list, methods=["GET"]),
            Route("/v1/keys/{key_id}", self.revoke, methods=["DELETE"]),
        ]

    async def _admin(self, request: Request) -> None:
        principal = await self.rt.access.key(request)
        if not principal.admin:  # a tenant key cannot tell that key management exists
            raise NotFound("not found", code="not_found")

    async def create(self, request: Request) -> JSONResponse:
        await self._admin(request)
        body = await read_json(request, 16_384)
        name = opt_str(body, "name", max_len=128)
        if name is None:
            raise BadRequest("`name` is required", code="missing_name")
        tenant = opt_str(body, "tenant", max_len=64)
        if tenant is not None and not SLUG.match(tenant):
            raise BadRequest("`tenant` is letters, digits, '-', '_' and '.'", code="invalid_tenant")
        agents = body.get("agents")
        if agents is not None and (
            not isinstance(agents, list)
            or len(agents) > 1000
            or not all(isinstance(a, str) and SLUG.match(a) for a in agents)
        ):
            raise BadRequest("`agents` must be a list of agent ids", code="invalid_agents")
        flags = {k: body.get(k, False) for k in ("readOnly", "admin")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise BadRequest("`readOnly` and `admin` are booleans", code="invalid_field")
        key, record = await self.rt.auth.create_key(
            name, tenant, agents=agents, read_only=flags["readOnly"], admin=flags["admin"]
        )
        return JSONResponse({"key": key, **key_json(record)}, status_code=201)

    async def list(self, request: Request) -> JSONResponse:
        await self._admin(request)
        tenant = request.query_params.get("tenant")
        keys = [k for k in await self.rt.store.api_keys() if tenant is None or k.tenant == tenant]
        return JSONResponse({"keys": [key_json(k) for k in keys]})

    async def revoke(self, request: Request) -> JSONResponse:
        await self._admin(request)
        key_id = request.path_params["key_id"]
        if not key_id.startswith("key_") or not await self.rt.store.revoke_api_key(key_id):
            raise NotFound(f"no active key {key_id!r}", code="unknown_key")
        return JSONResponse({"id": key_id, "revoked": True})
