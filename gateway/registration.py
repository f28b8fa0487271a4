"""What an agent process may declare with `agent.register` (docs/security.md).

- A key registers only agent ids in its scope: a new id becomes an agent of the
  key's tenant; an existing id must be visible to the key.
- An agent defined in gateway.toml is never redefined by a process. A process may
  serve it (answer turns, run its tools, screen its calls) only when its config says
  so (`process`, or an agent that needs a process) and the key is in scope.
- A non-admin key may create only the kinds of agent the operator allows
  (`server.key_agent_kinds`: by default `echo` and `process`, which make the gateway
  call no URL), names only the environment variables the operator lists
  (`server.key_secret_envs`), and binds no provider number.
- Every URL a process-declared agent makes the gateway call is refused when it is a
  loopback, link-local or private address, unless `server.allow_private_urls`.
"""

from __future__ import annotations

from typing import Any

from gateway.access import Access
from gateway.auth import Principal
from gateway.directory import AgentDirectory
from gateway.errors import Forbidden, NotFound
from gateway.settings import AgentConfig, ServerConfig
from gateway.urls import check_url


class Registrations:
    def __init__(self, server: ServerConfig, directory: AgentDirectory, access: Access) -> None:
        self._server = server
        self._directory = directory
        self._access = access

    async def check(self, principal: Principal, agent_id: str, config: AgentConfig) -> AgentConfig:
        """The config the agent runs with once registered, or a GatewayError saying why not."""
        Access.write(principal)
        existing = self._directory.find(agent_id)
        if principal.agents is not None and agent_id not in principal.agents:
            raise NotFound(f"agent {agent_id!r} is not in this key's scope", code="unknown_agent")
        if existing is not None:
            if not self._access.sees(principal, agent_id):
                # Another tenant's agent answers as an id this key cannot have.
                raise NotFound(f"agent {agent_id!r} is not in this key's scope", code="unknown_agent")
            if self._directory.origin(agent_id) == "config":
                if not existing.process_may_serve:
                    raise Forbidden(
                        f"agent {agent_id!r} is defined in gateway.toml and is not served by processes "
                        "(set `process = true` on it to allow that)",
                        code="config_agent",
                    )
                return served(existing, config)
        tenant = config.tenant
        if not principal.admin:
            if tenant is not None and tenant != principal.tenant:
                raise Forbidden(
                    f"this key registers agents of tenant {principal.tenant!r} only", code="tenant"
                )
            tenant = principal.tenant
            self._check_kinds(config)
        elif existing is not None:
            if tenant is None:
                tenant = existing.tenant  # an agent's tenant is fixed once it exists
            elif tenant != existing.tenant:
                raise Forbidden(f"agent {agent_id!r} belongs to tenant {existing.tenant!r}", code="tenant")
        for what, url in _urls(config):
            await check_url(url, allow_private=self._server.allow_private_urls, what=what)
        return config.model_copy(update={"tenant": tenant})

    def _check_kinds(self, config: AgentConfig) -> None:
        allowed = set(self._server.key_agent_kinds)
        wanted: set[str] = {config.answer}
        if any(t.url for t in config.tools):
            wanted.add("tool_url")
        if config.transcriber is not None:
            wanted.add("transcriber")
        if config.llm is not None:
            wanted.add("llm")
        if config.webhook is not None:
            wanted.add("webhook")
        refused = sorted(wanted - allowed)
        if refused:
            raise Forbidden(
                f"this key may not register agents that use {', '.join(refused)} "
                f"(the operator allows: {', '.join(sorted(allowed))}; server.key_agent_kinds)",
                code="agent_kind_not_allowed",
            )
        if config.whatsapp or config.twilio or config.dev_routes:
            raise Forbidden(
                "provider numbers and dev_routes are bound in gateway.toml only",
                code="agent_kind_not_allowed",
            )
        envs = set(self._server.key_secret_envs)
        for name in _envs(config):
            if name not in envs:
                raise Forbidden(
                    f"environment variable {name!r} is not one this key may name (server.key_secret_envs)",
                    code="env_not_allowed",
                )


def served(configured: AgentConfig, declared: AgentConfig) -> AgentConfig:
    """A gateway.toml agent as a process serves it: exactly as configured, plus what only a
    process can bring: its own tools (without `url`, under names the config does not use)
    and screening the agent's calls (`phone.ringing`). Prompt, model, answer, URLs,
    numbers, origins and tenant stay as the operator wrote them."""
    names = {t.name for t in configured.tools}
    tools = [t for t in declared.tools if t.url is None and t.name not in names]
    update: dict[str, Any] = {}
    if tools:
        update["tools"] = [*configured.tools, *tools]
    if declared.phone.ringing and not configured.phone.ringing:
        update["phone"] = configured.phone.model_copy(update={"ringing": True})
    return configured.model_copy(update=update) if update else configured


def _urls(config: AgentConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if config.llm is not None:
        out.append(("llm.base_url", config.llm.base_url))
    if config.webhook is not None:
        out.append(("webhook.url", config.webhook.url))
    if config.transcriber is not None:
        out.append(("transcriber.base_url", config.transcriber.base_url))
    out.extend((f"tools.{t.name}.url", t.url) for t in config.tools if t.url)
    return out


def _envs(config: AgentConfig) -> list[str]:
    names: list[Any] = []
    if config.llm is not None:
        names.append(config.llm.api_key_env)
    if config.webhook is not None:
        names.append(config.webhook.secret_env)
    if config.transcriber is not None:
        names.append(config.transcriber.api_key_env)
    return [n for n in names if n]
