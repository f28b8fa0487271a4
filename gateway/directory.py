"""The agent directory: which agents exist and how each is configured.

Agents come from gateway.toml (fixed for the life of the process) and, from the
agents issue on, from agent processes that declare themselves at run time. Every
lookup goes through here so that a hot change is seen by the next turn.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import NotFound
from gateway.settings import AgentConfig, Settings


class AgentDirectory:
    def __init__(self, settings: Settings) -> None:
        self._agents: dict[str, AgentConfig] = dict(settings.agents)
        self._origins: dict[str, str] = {name: "config" for name in settings.agents}
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, callback: Callable[[str], None]) -> None:
        """`callback(agent_id)` after an agent is added or its config replaced (the feeds'
        fan-out asks its scoped readers about that agent again)."""
        self._watchers.append(callback)

    def get(self, agent_id: str) -> AgentConfig:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise NotFound(f"unknown agent {agent_id!r}", code="unknown_agent") from None

    def find(self, agent_id: str) -> AgentConfig | None:
        return self._agents.get(agent_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def ids(self) -> list[str]:
        return sorted(self._agents)

    def put(self, agent_id: str, config: AgentConfig, origin: str = "process") -> None:
        self._agents[agent_id] = config
        self._origins[agent_id] = origin
        for callback in self._watchers:
            callback(agent_id)

    def origin(self, agent_id: str) -> str:
        return self._origins.get(agent_id, "config")

    def as_json(self) -> dict[str, dict[str, object]]:
        return {name: cfg.model_dump(mode="json") for name, cfg in self._agents.items()}
