"""Tool runners: every failure becomes an `{"error": ...}` result, never an exception."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.agents.base import ToolCall, Turn
from gateway.agents.tools import HttpToolRunner, RoutingToolRunner
from gateway.settings import ToolConfig
from tests.fakes import bounded, make_turn, unused_port
from tests.fakes.scripted_http import Recorded, Reply, ScriptedServer

TURN = make_turn({"answer": "llm", "llm": {"model": "m"}})


def tool(url: str | None, **fields: Any) -> ToolConfig:
    return ToolConfig(name="lookup", url=url, **fields)


def call(arguments: str = '{"id": 7}') -> ToolCall:
    return ToolCall(id="call_1", name="lookup", arguments=arguments)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as srv:
        yield srv


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@bounded(5)
async def test_posts_arguments_and_returns_json(server: ScriptedServer, client: httpx.AsyncClient) -> None:
    def answer(request: Recorded) -> Reply:
        body = b'{"echo": ' + request.body + b"}"
        return Reply(headers={"content-type": "application/json"}, pieces=[body], chunked=False)

    server.route("/tool", answer)
    result = await HttpToolRunner(client).call(TURN, tool(server.base_url + "/tool"), call())
    assert result == {"echo": {"id": 7}}
    request = server.requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-gateway-session"] == "chat-test"
    assert request.headers["x-gateway-tool-call"] == "call_1"


@bounded(5)
async def test_text_and_empty_answers(server: ScriptedServer, client: httpx.AsyncClient) -> None:
    server.script(
        [
            Reply(pieces=[b"plain words"]),
            Reply(status=204),
            Reply(pieces=[b"{oops"], headers={"content-type": "application/json"}),
        ]
    )
    runner = HttpToolRunner(client)
    url = server.base_url + "/t"
    assert await runner.call(TURN, tool(url), call("")) == "plain words"
    assert await runner.call(TURN, tool(url), call()) == {"ok": True}
    assert await runner.call(TURN, tool(url), call()) == "{oops"
    assert server.requests[0].json() == {}


@bounded(5)
async def test_non_2xx_timeout_and_refused(server: ScriptedServer, client: httpx.AsyncClient) -> None:
    server.script([Reply(status=503, pieces=[b"maintenance " * 40]), Reply(stall_before=10)])
    runner = HttpToolRunner(client)
    url = server.base_url + "/t"
    failed = await runner.call(TURN, tool(url), call())
    assert failed["error"].startswith("tool lookup failed with HTTP 503: maintenance")
    assert len(failed["error"]) < 260
    started = asyncio.get_running_loop().time()
    assert await runner.call(TURN, tool(url, timeout_seconds=0.2), call()) == {
        "error": "tool lookup timed out after 0.2 s"
    }
    assert asyncio.get_running_loop().time() - started < 2
    refused = await runner.call(TURN, tool(f"http://127.0.0.1:{unused_port()}/t"), call())
    assert refused["error"].startswith("tool lookup is unreachable")


@bounded(5)
async def test_bad_arguments_never_reach_the_tool(server: ScriptedServer, client: httpx.AsyncClient) -> None:
    runner = RoutingToolRunner(HttpToolRunner(client))
    url = server.base_url + "/t"
    bad = await runner.call(TURN, tool(url), call('{"id": '))
    assert bad["error"].startswith("invalid JSON arguments for tool lookup")
    assert await runner.call(TURN, tool(url), call("[1]")) == {
        "error": "arguments for tool lookup must be a JSON object, got list"
    }
    assert server.requests == []


class ProcessRunner:
    """A stand-in for the agent-process runner (another module implements the real one)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        self.calls.append(call.id)
        if self.fail:
            raise RuntimeError("process crashed")
        return {"from": "process"}


@bounded(5)
async def test_routing(client: httpx.AsyncClient) -> None:
    without = RoutingToolRunner(HttpToolRunner(client), None)
    assert await without.call(TURN, tool(None), call()) == {
        "error": "tool lookup runs in an agent process and none is connected"
    }
    process = ProcessRunner()
    assert await RoutingToolRunner(HttpToolRunner(client), process).call(TURN, tool(None), call()) == {
        "from": "process"
    }
    failing = RoutingToolRunner(HttpToolRunner(client), ProcessRunner(fail=True))
    assert await failing.call(TURN, tool(None), call()) == {
        "error": "tool lookup failed: RuntimeError: process crashed"
    }
