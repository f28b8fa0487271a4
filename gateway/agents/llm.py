"""The `llm` agent: an OpenAI-compatible chat-completions endpoint, streamed.

One turn = one or more streamed completions. Text deltas are yielded as they
arrive. When a response ends with tool calls, the calls are announced
(`ToolCallsRequested`), run through the `ToolRunner` concurrently, their results
announced (`ToolResultReady`) and appended to the conversation, and the
completion continues. After `limits.max_tool_rounds` rounds of tools, further
calls are not run: each gets the result `{"error": "tool round limit reached"}`
and one last completion is requested with `tool_choice: "none"`; should the
model still ask for tools then, the turn ends with the text it has produced.

Timeouts: `request_timeout_seconds` bounds connecting and each silence between
two received pieces (httpx's read timeout, so never below the first-token one);
`first_token_timeout_seconds` bounds the wait from sending a request to its
first text, tool-call (or reasoning) delta. Failures of the
endpoint raise `AgentError`; tool failures never do (the model sees them).

The HTTP client is injected so the composition root can share or shard clients
(one httpx pool degrades past ~100 concurrent streams, see PERFORMANCE.md).
Closing the generator closes the upstream response at once (`async with
client.stream`), which is how a turn is cancelled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.agents.base import AgentOutput, TextDelta, ToolCall, ToolCallsRequested, ToolResultReady, Turn
from gateway.agents.openai_stream import ChatStreamParser, ToolCallAssembler, parse_json_object
from gateway.agents.prompt import Message, build_messages
from gateway.agents.tools import ToolRunner, error_result
from gateway.errors import AgentError
from gateway.settings import LlmConfig, ToolConfig
from gateway.types import Channel

_DRAIN_SECONDS = 1.0  # after [DONE], how long we read on so the connection can be reused
_LIMIT_REACHED = "tool round limit reached"


@dataclass(frozen=True, slots=True)
class _Completed:
    """The end of one streamed completion: its text and any tool calls."""

    text: str
    calls: tuple[ToolCall, ...]


class LlmAgent:
    def __init__(self, client: httpx.AsyncClient, tools: ToolRunner, env: Mapping[str, str]) -> None:
        self._client = client
        self._tools = tools
        self._env = env

    async def run(self, turn: Turn) -> AsyncIterator[AgentOutput]:
        llm = turn.agent.llm
        if llm is None:
            raise AgentError(f"agent {turn.agent_id} has no [llm] configuration")
        url = llm.base_url.rstrip("/") + "/chat/completions"
        headers = self._headers(llm)
        # The built-in call tools (endCall, transferToHuman) mean nothing outside a phone call.
        on_call = turn.channel == Channel.PHONE
        tools = {t.name: t for t in turn.agent.tools if on_call or not turn.agent.builtin_call_tool(t)}
        messages = build_messages(turn, llm.history_budget_chars)
        rounds = 0
        last_round = False
        while True:
            body = _body(llm, messages, tools, last_round=last_round)
            completed = _Completed("", ())
            async with aclosing(self._complete(llm, url, headers, body)) as stream:
                async for item in stream:
                    if isinstance(item, _Completed):
                        completed = item
                    else:
                        yield item
            if not completed.calls or last_round:
                return
            calls = completed.calls
            yield ToolCallsRequested(
                calls=calls,
                text=completed.text,
                ephemeral=all(c.name in tools and tools[c.name].ephemeral for c in calls),
            )
            messages.append(_assistant_message(completed))
            if rounds >= turn.agent.limits.max_tool_rounds:
                results: list[Any] = [error_result(_LIMIT_REACHED) for _ in calls]
                last_round = True
            else:
                results = await self._run_tools(turn, tools, calls)
            rounds += 1
            for call, result in zip(calls, results, strict=True):
                tool = tools.get(call.name)
                yield ToolResultReady(
                    call_id=call.id, name=call.name, result=result, ephemeral=bool(tool and tool.ephemeral)
                )
                messages.append({"role": "tool", "tool_call_id": call.id, "content": _content(result)})

    def _headers(self, llm: LlmConfig) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if llm.api_key_env:
            key = self._env.get(llm.api_key_env)
            if not key:
                raise AgentError(f"the LLM API key variable {llm.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _run_tools(
        self, turn: Turn, tools: Mapping[str, ToolConfig], calls: tuple[ToolCall, ...]
    ) -> list[Any]:
        async def one(call: ToolCall) -> Any:
            tool = tools.get(call.name)
            if tool is None:
                return error_result(f"unknown tool {call.name}")
            try:
                return await self._tools.call(turn, tool, call)
            except Exception as exc:  # runners should not raise; if one does, the model is told
                return error_result(f"tool {call.name} failed: {exc}")

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(c)) for c in calls]
        return [t.result() for t in tasks]

    async def _complete(
        self, llm: LlmConfig, url: str, headers: Mapping[str, str], body: Mapping[str, Any]
    ) -> AsyncGenerator[TextDelta | _Completed, None]:
        """Stream one completion: `TextDelta`s, then one `_Completed`.

        The first-token deadline wraps only awaits, never a `yield`: a timeout
        scope left open across a yield would cancel the consumer's code instead.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + llm.first_token_timeout_seconds
        timeout = httpx.Timeout(
            llm.request_timeout_seconds,
            read=max(llm.request_timeout_seconds, llm.first_token_timeout_seconds),
        )
        request = self._client.build_request("POST", url, json=body, headers=headers, timeout=timeout)
        answer = _Answer()
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
            try:
                if not response.is_success:
                    raise AgentError(await _http_error(response))
                if "application/json" in response.headers.get("content-type", ""):
                    async with asyncio.timeout_at(deadline):
                        raw = await response.aread()
                    for text in answer.feed([_non_streamed(raw)]):
                        yield TextDelta(text=text)
                else:
                    parser = ChatStreamParser()
                    pieces = response.aiter_bytes()
                    ended = False
                    while not answer.started and not parser.done:
                        try:
                            async with asyncio.timeout_at(deadline):
                                piece = await anext(pieces)
                        except StopAsyncIteration:
                            ended = True
                            break
                        for text in answer.feed(parser.feed(piece)):
                            yield TextDelta(text=text)
                    if not ended and not parser.done:
                        async for piece in pieces:
                            for text in answer.feed(parser.feed(piece)):
                                yield TextDelta(text=text)
                            if parser.done:
                                break
                    if parser.done:
                        await _drain(pieces)
                    else:
                        for text in answer.feed(parser.close()):
                            yield TextDelta(text=text)
            finally:
                await response.aclose()
        except TimeoutError:
            raise AgentError(
                f"LLM at {llm.base_url} sent no first token within {llm.first_token_timeout_seconds:g} s"
            ) from None
        except httpx.TimeoutException:
            raise AgentError(
                f"LLM at {llm.base_url} timed out (nothing received for {llm.request_timeout_seconds:g} s)"
            ) from None
        except httpx.ConnectError as exc:
            raise AgentError(f"LLM at {llm.base_url} is unreachable: {exc}") from None
        except httpx.HTTPError as exc:
            raise AgentError(f"LLM stream from {llm.base_url} failed: {type(exc).__name__}: {exc}") from None
        yield _Completed("".join(answer.texts), answer.tools.calls())


class _Answer:
    """What one completion said so far; `feed` returns the new text pieces."""

    __slots__ = ("started", "texts", "tools")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tools = ToolCallAssembler()
        self.started = False  # a first text / tool-call / reasoning delta arrived

    def feed(self, chunks: list[dict[str, Any]]) -> list[str]:
        new: list[str] = []
        for chunk in chunks:
            delta = _delta(chunk)
            if delta is None:
                continue
            content = delta.get("content")
            if content and isinstance(content, str):
                new.append(content)
            calls = delta.get("tool_calls")
            if calls:
                self.tools.add(calls)
            if content or calls or delta.get("reasoning_content") or delta.get("reasoning"):
                self.started = True
        self.texts.extend(new)
        return new


def _body(
    llm: LlmConfig, messages: list[Message], tools: Mapping[str, ToolConfig], *, last_round: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": llm.model, "messages": messages, "stream": True}
    if llm.temperature is not None:
        body["temperature"] = llm.temperature
    if llm.max_tokens is not None:
        body["max_tokens"] = llm.max_tokens
    if tools:
        body["tools"] = [_tool_spec(t) for t in tools.values()]
        if last_round:
            body["tool_choice"] = "none"
    body.update(llm.extra_body)
    return body


def _tool_spec(tool: ToolConfig) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _delta(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The first choice's delta; raises on an in-stream error object."""
    choices = chunk.get("choices")
    if not choices:
        if "error" in chunk:
            raise AgentError(f"LLM stream error: {_error_text(chunk['error'])}")
        return None  # e.g. a usage-only chunk
    try:
        delta = choices[0]["delta"]
    except (LookupError, TypeError):
        return None
    return delta if isinstance(delta, dict) else None


def _non_streamed(raw: bytes) -> dict[str, Any]:
    """A server that ignored `stream: true`: its message becomes one delta."""
    chunk = parse_json_object(raw, what="LLM response")
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return {"choices": [{"delta": message}]}
    return chunk


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """Read the (empty) rest of the body briefly, so the connection goes back to the pool."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in pieces:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass


async def _http_error(response: httpx.Response) -> str:
    raw = await response.aread()
    detail = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        pass
    else:
        if isinstance(parsed, dict) and "error" in parsed:
            detail = _error_text(parsed["error"])
    detail = detail.strip()[:200]
    return f"LLM at {response.request.url} answered HTTP {response.status_code}" + (
        f": {detail}" if detail else ""
    )


def _error_text(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:200]
    return (error if isinstance(error, str) else json.dumps(error, default=str))[:200]


def _assistant_message(completed: _Completed) -> Message:
    return {
        "role": "assistant",
        "content": completed.text or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completed.calls
        ],
    }


def _content(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
