"""`POST/GET/DELETE /v1/keys`: API keys, for admin keys only (PROTOCOL §11).

A key is shown once, in the answer to its creation; only its SHA-256 is stored.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway.access import Access
from gateway.api.models import KeyListQuery, KeyRequest
from gateway.api.operation import ApiRoute, parse_body, parse_query
from gateway.auth import Auth
from gateway.errors import BadRequest, NotFound
from gateway.store.records import ApiKeyRecord
from gateway.store.sql import Store

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
    def __init__(self, *, access: Access, auth: Auth, store: Store) -> None:
        self.access = access
        self.auth = auth
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/keys",
                self.create,
                method="POST",
                summary="Create an API key (admin keys only); the key is in this answer only",
                body=KeyRequest,
                ok=201,
                errors=(401, 404, 413, 415),
            ),
            ApiRoute(
                "/v1/keys",
                self.list,
                method="GET",
                summary="List API keys (admin keys only)",
                query=KeyListQuery,
                errors=(401, 404),
            ),
            ApiRoute(
                "/v1/keys/{key_id}",
                self.revoke,
                method="DELETE",
                summary="Revoke an API key (admin keys only)",
                errors=(401, 404),
            ),
        ]

    async def _admin(self, request: Request) -> None:
        principal = await self.access.key(request)
        if not principal.admin:  # a tenant key cannot tell that key management exists
            raise NotFound("not found", code="not_found")

    async def create(self, request: Request) -> JSONResponse:
        await self._admin(request)
        body = await parse_body(request, KeyRequest, limit=16_384)
        name, tenant, agents = body.name, body.tenant, body.agents
        if tenant is not None and not SLUG.match(tenant):
            raise BadRequest("`tenant` is letters, digits, '-', '_' and '.'", code="invalid_tenant")
        if agents is not None and not all(SLUG.match(a) for a in agents):
            raise BadRequest("`agents` must be a list of agent ids", code="invalid_agents")
        key, record = await self.auth.create_key(
            name, tenant, agents=agents, read_only=body.readOnly, admin=body.admin
        )
        return JSONResponse({"key": key, **key_json(record)}, status_code=201)

    async def list(self, request: Request) -> JSONResponse:
        await self._admin(request)
        tenant = parse_query(request, KeyListQuery).tenant
        keys = [k for k in await self.store.api_keys() if tenant is None or k.tenant == tenant]
        return JSONResponse({"keys": [key_json(k) for k in keys]})

    async def revoke(self, request: Request) -> JSONResponse:
        await self._admin(request)
        key_id = request.path_params["key_id"]
        if not key_id.startswith("key_") or not await self.store.revoke_api_key(key_id):
            raise NotFound(f"no active key {key_id!r}", code="unknown_key")
        return JSONResponse({"id": key_id, "revoked": True})
