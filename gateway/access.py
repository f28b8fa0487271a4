"""Who may see and do what: the one place every surface asks (docs/tenants.md).

A credential's scope is a `Principal` (gateway/auth.py); this class applies it. An
agent is visible when the scope allows its id and its tenant; a session, message or
event is visible when its agent is (and, for a stream token of one session, when it
is that session). Anything outside the scope answers exactly as a missing thing does
(404 with the same code and message), so a key cannot even learn that it exists. A
read-only key gets 403 on every write. REST routes authenticate through `key()`,
which also applies the key's rate limit; the feeds, the chat socket and the agent
socket ask `sees()` / `visible()`; the store takes the visible agent ids as a filter.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from gateway.auth import Auth, Principal
from gateway.directory import AgentDirectory
from gateway.errors import Forbidden, NotFound, RateLimited
from gateway.ratelimit import RateLimiter
from gateway.settings import AgentConfig
from gateway.store.records import SessionRecord
from gateway.store.sql import Store

READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Access:
    def __init__(self, auth: Auth, directory: AgentDirectory, store: Store, limiter: RateLimiter) -> None:
        self._auth = auth
        self._directory = directory
        self._store = store
        self._limiter = limiter

    async def key(self, conn: HTTPConnection, *, write: bool | None = None) -> Principal:
        """The caller's API key as a scope: 401 without a valid key, 429 over its rate,
        403 for a write (any method but GET/HEAD unless `write` says otherwise) with a
        read-only key."""
        principal = await self._auth.api_key(conn.headers)
        if not principal.admin:  # the operator's admin keys are never throttled
            wait = self._limiter.take(principal.key_id or principal.name)
            if wait is not None:
                raise RateLimited(f"too many requests for key {principal.name!r}", retry_after=wait)
        if write is None:
            write = conn.scope.get("method", "GET") not in READS
        if write:
            self.write(principal)
        return principal

    @staticmethod
    def write(principal: Principal) -> None:
        if principal.read_only:
            raise Forbidden(f"key {principal.name!r} is read-only", code="read_only")

    @staticmethod
    def admin(principal: Principal) -> None:
        if not principal.admin:
            raise Forbidden("this needs an admin key", code="admin_only")

    # ---------------------------------------------------------------- agents

    def sees(self, principal: Principal, agent_id: str) -> bool:
        config = self._directory.find(agent_id)
        return config is not None and principal.allows(agent_id, config.tenant)

    def agent(self, principal: Principal, agent_id: str) -> AgentConfig:
        """The agent's config, or the same 404 as an unknown agent."""
        config = self._directory.find(agent_id)
        if config is None or not principal.allows(agent_id, config.tenant):
            raise NotFound(f"unknown agent {agent_id!r}", code="unknown_agent")
        return config

    def visible(self, principal: Principal) -> frozenset[str] | None:
        """The agent ids the scope sees; None when it sees every agent (an unnarrowed admin key)."""
        if principal.admin and principal.agents is None:
            return None
        return frozenset(a for a in self._directory.ids() if self.sees(principal, a))

    def agents(self, principal: Principal) -> frozenset[str]:
        """The agent ids the scope sees now, as a set (for feeds)."""
        return frozenset(a for a in self._directory.ids() if self.sees(principal, a))

    # -------------------------------------------------------------- sessions

    def sees_session(self, principal: Principal, session: SessionRecord) -> bool:
        if principal.session is not None and session.id != principal.session:
            return False
        return self.sees(principal, session.agent_id)

    async def session(self, principal: Principal, session_id: str) -> SessionRecord:
        """The session, or the same 404 as a missing one."""
        session = await self._store.session(session_id)
        if session is None or not self.sees_session(principal, session):
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session
