"""Chooses the implementation that answers for an agent, from its `answer` setting.

Owns the outbound HTTP clients of the agent modes. PERFORMANCE.md lesson 4: one
httpx pool degrades past ~100 concurrent streams (its pool scan dominates), so
LLM traffic is spread round-robin over a few clients.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import httpx

from gateway.agents.base import Agent
from gateway.agents.echo import EchoAgent
from gateway.agents.llm import LlmAgent
from gateway.agents.remote import ProcessAgent, ProcessHub, ProcessToolRunner
from gateway.agents.tools import HttpToolRunner, RoutingToolRunner
from gateway.agents.webhook import WebhookAgent
from gateway.errors import AgentError
from gateway.settings import AgentConfig

LLM_CLIENTS = 4


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        timeout=httpx.Timeout(60.0, connect=10.0),
        follow_redirects=False,
    )


class AgentFactory:
    def __init__(self, hub: ProcessHub, env: Mapping[str, str]) -> None:
        self.hub = hub
        self._clients = [_client() for _ in range(LLM_CLIENTS)]
        tools = RoutingToolRunner(HttpToolRunner(self._clients[0]), ProcessToolRunner(hub))
        self._echo = EchoAgent()
        self._llms = itertools.cycle([LlmAgent(c, tools, env) for c in self._clients])
        self._webhook = WebhookAgent(self._clients[-1], env)
        self._process = ProcessAgent(hub)

    def agent_for(self, agent_id: str, config: AgentConfig) -> Agent:
        if config.answer == "echo":
            return self._echo
        if config.answer == "llm":
            return next(self._llms)
        if config.answer == "webhook":
            return self._webhook
        if config.answer == "process":
            return self._process
        raise AgentError(f"agent {agent_id!r}: unknown answer mode {config.answer!r}")

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
