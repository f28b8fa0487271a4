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

from gateway.errors import BadRequest, Unauthorized
from gateway.events import now_ms
from gateway.settings import Settings
from gateway.store.records import ApiKeyRecord, TokenRecord
from gateway.store.sql import Store

TOKEN_CHANNELS = frozenset({"chat", "stream"})
LAST_USED_GRANULARITY_MS = 60_000


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who is calling and what they may see: the scope of a key or a browser token.

    An admin key sees every agent. Any other credential sees the agents of its
    `tenant` (None: the operator's agents, those without a tenant), narrowed to
    `agents` when set. A stream token sees one agent, and one session when minted
    for one. Whether an agent is visible is decided by `Access` (gateway/access.py),
    which knows each agent's tenant; nothing else decides it.
    """

    name: str
    admin: bool = False
    tenant: str | None = None
    agents: frozenset[str] | None = None
    read_only: bool = False
    session: str | None = None  # a stream token minted for one session
    key_id: str | None = None

    def allows(self, agent_id: str, agent_tenant: str | None) -> bool:
        if self.agents is not None and agent_id not in self.agents:
            return False
        return self.admin or agent_tenant == self.tenant


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
                self._static[digest] = Principal(
                    name=key.name,
                    admin=key.admin,
                    tenant=key.tenant,
                    agents=None if key.agents is None else frozenset(key.agents),
                    read_only=key.read_only,
                )

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
        now = now_ms()
        if record.last_used_at is None or now - record.last_used_at > LAST_USED_GRANULARITY_MS:
            await self._store.touch_api_key(record.id, now)  # at most once a minute per key
        return Principal(
            name=record.name,
            admin=record.admin,
            tenant=record.tenant,
            agents=None if record.agents is None else frozenset(record.agents),
            read_only=record.read_only,
            key_id=record.id,
        )

    async def create_key(
        self,
        name: str,
        tenant: str | None = None,
        *,
        agents: list[str] | None = None,
        read_only: bool = False,
        admin: bool = False,
    ) -> tuple[str, ApiKeyRecord]:
        """A new key, returned once; only its hash is stored."""
        if admin and (tenant is not None or agents is not None):
            raise BadRequest(
                "an admin key sees every tenant: it takes no tenant or agents", code="invalid_key"
            )
        key = "sk_" + secrets.token_urlsafe(32)
        record = await self._store.add_api_key(
            name=name,
            prefix=key[:10],
            sha256=sha256(key),
            tenant=tenant,
            agents=agents,
            read_only=read_only,
            admin=admin,
        )
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
