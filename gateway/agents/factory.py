"""Chooses the implementation that answers for an agent, from its `answer` setting.

Owns the outbound HTTP clients of the agent modes. PERFORMANCE.md lesson 4: one
httpx pool degrades past ~100 concurrent streams (its pool scan dominates), so
LLM traffic is spread round-robin over a few clients.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from gateway.agents.base import Agent, ToolCall, Turn
from gateway.agents.echo import EchoAgent
from gateway.agents.llm import LlmAgent
from gateway.agents.remote import ProcessAgent, ProcessHub, ProcessToolRunner
from gateway.agents.tools import (
    HttpToolRunner,
    RoutingToolRunner,
    ToolRunner,
    error_result,
    parse_arguments,
)
from gateway.agents.webhook import WebhookAgent
from gateway.errors import AgentError, GatewayError
from gateway.settings import END_CALL, REQUEST_HUMAN, AgentConfig, ToolConfig
from gateway.types import Channel

LLM_CLIENTS = 4
# CallControl.control: (session id, action, args, *, after_reply) -> result.
CallAction = Callable[..., Awaitable[dict[str, Any]]]


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        timeout=httpx.Timeout(60.0, connect=10.0),
        follow_redirects=False,
    )


class BuiltinTools:
    """Tools the gateway itself implements (`request_human`, and on phone calls `endCall` and
    `transferToHuman`); everything else passes through."""

    def __init__(self, inner: ToolRunner) -> None:
        self._inner = inner
        self.request_human: Callable[[str, str], Awaitable[None]] | None = None
        self.call_control: CallAction | None = None

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        if turn.agent.builtin_call_tool(tool):
            return await self._call_tool(turn, tool, call)
        if tool.name != REQUEST_HUMAN or tool.url or self.request_human is None:
            return await self._inner.call(turn, tool, call)
        arguments = parse_arguments(call)
        reason = arguments.get("reason") if isinstance(arguments, dict) else None
        await self.request_human(turn.session_id, str(reason or "the agent asked for a human"))
        return {"ok": True, "status": "a human operator has been asked to take over this conversation"}

    async def _call_tool(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        if turn.channel != Channel.PHONE or self.call_control is None:
            return error_result(f"{tool.name} works only during a phone call")
        if tool.name == END_CALL:
            action, args = "hangup", {"reason": "closed"}
        else:
            action, args = "forward", {"to": turn.agent.phone.transfer_to or ""}
        try:
            await self.call_control(turn.session_id, action, args, after_reply=True)
        except GatewayError as exc:
            return error_result(exc.message)
        if action == "hangup":
            return {"ok": True, "status": "the call will end after your reply"}
        return {"ok": True, "status": "the caller will be transferred after your reply"}


class AgentFactory:
    def __init__(self, hub: ProcessHub, env: Mapping[str, str]) -> None:
        self.hub = hub
        self._clients = [_client() for _ in range(LLM_CLIENTS)]
        self.builtins = BuiltinTools(
            RoutingToolRunner(HttpToolRunner(self._clients[0]), ProcessToolRunner(hub))
        )
        tools = self.builtins
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
