"""API keys, browser tokens and allowed origins (PROTOCOL §4).

API keys are long random secrets; only their SHA-256 is stored (a slow hash buys
nothing for 256-bit random keys). Browser tokens are single-use and short-lived;
their hash lives in the database so that "single use" holds across processes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import Forbidden, Unauthorized
from gateway.events import now_ms
from gateway.settings import Settings
from gateway.store.records import ApiKeyRecord, TokenRecord
from gateway.store.sql import Store

TOKEN_CHANNELS = frozenset({"chat", "stream"})


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who is calling. `tenant` is None for keys that see every agent."""

    name: str
    admin: bool = False
    tenant: str | None = None
    agent: str | None = None  # stream tokens are scoped to one agent

    def can_see(self, agent_id: str) -> bool:
        # The one place where tenant scoping will be decided (tenants arrive later):
        # until then a key sees every agent, a stream token only its own.
        return self.agent is None or self.agent == agent_id

    def check(self, agent_id: str) -> None:
        if not self.can_see(agent_id):
            raise Forbidden(f"this credential may not access agent {agent_id!r}")


def origin_allowed(origin: str | None, patterns: list[str]) -> bool:
    """`https://demo.site`, `https://*.site`, `http://localhost:*` (any port)."""
    if not origin:
        return False
    origin = origin.rstrip("/").lower()
    for pattern in patterns:
        pattern = pattern.rstrip("/").lower()
        if pattern == origin:
            return True
        if "*" in pattern and fnmatch.fnmatchcase(origin, pattern):
            # `*` must not swallow a scheme or a path: `https://*.site` ≠ `https://evil.com/x.site`.
            rest = origin.split("://", 1)[-1]
            if "/" not in rest and origin.split("://", 1)[0] == pattern.split("://", 1)[0]:
                return True
    return False


class Auth:
    def __init__(self, settings: Settings, store: Store, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._store = store
        self._ttl_ms = settings.server.token_ttl_seconds * 1000
        self._static: dict[str, Principal] = {}
        if settings.server.admin_key:
            self._static[sha256(settings.server.admin_key)] = Principal(name="admin", admin=True)
        for key in settings.api_keys:
            digest = key.sha256 or (
                sha256(env[key.key_env]) if key.key_env and env.get(key.key_env) else None
            )
            if digest:
                self._static[digest] = Principal(name=key.name)

    # ---------------------------------------------------------------- API keys

    async def api_key(self, headers: Mapping[str, str]) -> Principal:
        value = headers.get("authorization", "")
        scheme, _, key = value.partition(" ")
        if not value:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        digest = sha256(key.strip())
        for known, principal in self._static.items():
            if hmac.compare_digest(known, digest):
                return principal
        record = await self._store.api_key_by_hash(digest)
        if record is None or record.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        return Principal(name=record.name, tenant=record.tenant)

    async def create_key(self, name: str, tenant: str | None = None) -> tuple[str, ApiKeyRecord]:
        key = "sk_" + secrets.token_urlsafe(32)
        record = await self._store.add_api_key(name=name, prefix=key[:10], sha256=sha256(key), tenant=tenant)
        return key, record

    # ---------------------------------------------------------- browser tokens

    async def mint(
        self,
        *,
        channel: str,
        agent: str,
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> str:
        token = "tk_" + secrets.token_urlsafe(24)
        await self._store.add_token(
            sha256(token),
            TokenRecord(
                agent_id=agent,
                channel=channel,
                session_id=session_id,
                meta=metadata or {},
                expires_at=now_ms() + self._ttl_ms,
            ),
        )
        return token

    @property
    def ttl_seconds(self) -> int:
        return self._ttl_ms // 1000

    async def redeem(self, token: str | None, channel: str) -> TokenRecord:
        """Use a token once. Bad, expired, reused or wrong-channel tokens are all 401."""
        if not token or len(token) > 200 or not token.startswith("tk_"):
            raise Unauthorized("missing or malformed token", code="invalid_token")
        record = await self._store.consume_token(sha256(token))
        if record is None:
            raise Unauthorized("invalid, expired or already used token", code="invalid_token")
        if record.channel != channel:
            raise Unauthorized(f"this token is for the {record.channel!r} channel", code="invalid_token")
        return record
