"""Chooses the implementation that answers for an agent, from its `answer` setting."""

from __future__ import annotations

from gateway.agents.base import Agent
from gateway.agents.echo import EchoAgent
from gateway.errors import AgentError
from gateway.settings import AgentConfig


class AgentFactory:
    def __init__(self) -> None:
        self._echo = EchoAgent()

    def agent_for(self, agent_id: str, config: AgentConfig) -> Agent:
        if config.answer == "echo":
            return self._echo
        raise AgentError(f"agent {agent_id!r}: answer mode {config.answer!r} is not available")
