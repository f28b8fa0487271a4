"""Running the tools an LLM asks for.

A tool runs at an HTTP URL (`HttpToolRunner`) or in the agent process connected
over the agent WebSocket (a `ToolRunner` that another module provides);
`RoutingToolRunner` picks one per tool. Whatever goes wrong (bad arguments, a
timeout, a 500, nobody listening) becomes a result `{"error": "<message>"}`: the
model reads it and can apologise or retry, and the turn goes on. Only
cancellation escapes, so that closing a turn stops its tools.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httpx

from gateway.agents.base import ToolCall, Turn
from gateway.sanitizer import load_provider_json
from gateway.settings import ToolConfig

_BODY_PREVIEW = 200


class ToolRunner(Protocol):
    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any: ...


def error_result(message: str) -> dict[str, str]:
    return {"error": message}


def parse_arguments(call: ToolCall) -> dict[str, Any] | str:
    """The call's arguments as an object, or an error message for the model.

    An empty string means "no arguments" (some models send that for tools
    without parameters).
    """
    raw = call.arguments.strip()
    if not raw:
        return {}
    try:
        value = load_provider_json(raw)
    except (ValueError, RecursionError) as exc:
        return f"invalid JSON arguments for tool {call.name}: {exc}"
    if not isinstance(value, dict):
        return f"arguments for tool {call.name} must be a JSON object, got {type(value).__name__}"
    return value


class HttpToolRunner:
    """POSTs the arguments as JSON to `tool.url`; the response body is the result.

    A JSON response is returned parsed, anything else as text; an empty body is
    `{"ok": true}`. Headers `X-Gateway-Agent`, `X-Gateway-Session` and
    `X-Gateway-Tool-Call` let the tool know who is asking. `tool.timeout_seconds`
    bounds the whole exchange.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        if not tool.url:
            return error_result(f"tool {tool.name} has no url")
        arguments = parse_arguments(call)
        if isinstance(arguments, str):
            return error_result(arguments)
        headers = {
            "X-Gateway-Agent": turn.agent_id,
            "X-Gateway-Session": turn.session_id,
            "X-Gateway-Tool-Call": call.id,
        }
        seconds = tool.timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                response = await self._client.post(
                    tool.url, json=arguments, headers=headers, timeout=httpx.Timeout(seconds)
                )
        except (TimeoutError, httpx.TimeoutException):
            return error_result(f"tool {tool.name} timed out after {seconds:g} s")
        except httpx.ConnectError as exc:
            return error_result(f"tool {tool.name} is unreachable: {_describe(exc)}")
        except httpx.HTTPError as exc:
            return error_result(f"tool {tool.name} failed: {_describe(exc)}")
        return _result(tool.name, response)


def _result(name: str, response: httpx.Response) -> Any:
    if not response.is_success:
        body = response.text[:_BODY_PREVIEW].strip()
        suffix = f": {body}" if body else ""
        return error_result(f"tool {name} failed with HTTP {response.status_code}{suffix}")
    if not response.content:
        return {"ok": True}
    if "json" in response.headers.get("content-type", ""):
        try:
            return load_provider_json(response.content)
        except ValueError:
            pass
    return response.text


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RoutingToolRunner:
    """URL tools go over HTTP; the others to the connected agent process, if any."""

    def __init__(self, http: ToolRunner, process: ToolRunner | None = None) -> None:
        self._http = http
        self._process = process

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        arguments = parse_arguments(call)
        if isinstance(arguments, str):
            return error_result(arguments)
        runner = self._http if tool.url else self._process
        if runner is None:
            return error_result(f"tool {tool.name} runs in an agent process and none is connected")
        try:
            return await runner.call(turn, tool, call)
        except Exception as exc:  # a runner bug must not end the turn; the model is told
            return error_result(f"tool {tool.name} failed: {_describe(exc)}")
