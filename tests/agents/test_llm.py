"""`LlmAgent` against a real fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.agents.base import (
    AgentOutput,
    TextDelta,
    ToolCall,
    ToolCallsRequested,
    ToolResultReady,
    Turn,
)
from gateway.agents.llm import LlmAgent
from gateway.agents.tools import HttpToolRunner, RoutingToolRunner
from gateway.errors import AgentError
from gateway.settings import ToolConfig
from tests.fakes import bounded, make_turn, unused_port
from tests.fakes.openai_server import (
    FakeOpenAI,
    chunk,
    error_reply,
    sse,
    stalled,
    stream_reply,
    text_reply,
    tool_reply,
)
from tests.fakes.scripted_http import Recorded, Reply

ENV = {"OPENAI_KEY": "sk-test"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def config(fake: FakeOpenAI, *, tools: list[dict[str, Any]] | None = None, **llm: Any) -> dict[str, Any]:
    return {
        "answer": "llm",
        "prompt": "You help {{name}}.",
        "llm": {"model": "gpt-test", "base_url": fake.url, **llm},
        "tools": tools or [],
    }


def agent(client: httpx.AsyncClient, process: Any = None, env: dict[str, str] | None = None) -> LlmAgent:
    return LlmAgent(client, RoutingToolRunner(HttpToolRunner(client), process), ENV if env is None else env)


async def collect(llm: LlmAgent, turn: Turn) -> list[AgentOutput]:
    return [item async for item in llm.run(turn)]


def text_of(outputs: list[AgentOutput]) -> str:
    return "".join(o.text for o in outputs if isinstance(o, TextDelta))


def json_tool(fake: FakeOpenAI, path: str, answer: Any) -> str:
    def handler(request: Recorded) -> Reply:
        body = json.dumps({"args": request.json(), "answer": answer}).encode()
        return Reply(headers={"content-type": "application/json"}, pieces=[body], chunked=False)

    fake.route(path, handler)
    return fake.base_url + path


# --- text --------------------------------------------------------------------------------------


@bounded(5)
async def test_streams_text_and_sends_the_request(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([text_reply("Hél", "lo 🌍", "!")])
    cfg = config(fake, api_key_env="OPENAI_KEY", temperature=0.2, max_tokens=50, extra_body={"seed": 3})
    turn = make_turn(cfg, text="hi there", prompt_vars={"name": "Ada"})
    outputs = await collect(agent(client), turn)
    assert outputs == [TextDelta(text="Hél"), TextDelta(text="lo 🌍"), TextDelta(text="!")]
    [request] = fake.completions
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You help Ada."},
            {"role": "user", "content": "hi there"},
        ],
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 50,
        "seed": 3,
    }


@bounded(5)
async def test_no_key_configured_means_no_header(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([text_reply("ok")])
    assert text_of(await collect(agent(client), make_turn(config(fake)))) == "ok"
    assert "authorization" not in fake.completions[0].headers


@bounded(5)
async def test_missing_key_variable_is_a_clear_error(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    with pytest.raises(AgentError, match="OPENAI_KEY"):
        await collect(agent(client, env={}), make_turn(config(fake, api_key_env="OPENAI_KEY")))


@bounded(5)
async def test_stream_without_done_and_usage_chunks(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = sse(
        [chunk({"content": "a"}), {"choices": [], "usage": {"total_tokens": 3}}, chunk({"content": "b"})],
        done=False,
    )
    fake.script([stream_reply(body, pieces=[body[:7], body[7:]])])
    assert text_of(await collect(agent(client), make_turn(config(fake)))) == "ab"


@bounded(5)
async def test_server_that_ignores_stream_true(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "whole answer"}}]}).encode()
    fake.script([Reply(headers={"content-type": "application/json"}, pieces=[body], chunked=False)])
    assert await collect(agent(client), make_turn(config(fake))) == [TextDelta(text="whole answer")]


# --- tools -------------------------------------------------------------------------------------


@bounded(5)
async def test_two_tool_calls_run_and_the_completion_continues(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    tools: list[dict[str, Any]] = [
        {"name": "weather", "description": "Weather", "url": json_tool(fake, "/weather", "sunny")},
        {"name": "secret", "url": json_tool(fake, "/secret", "1234"), "ephemeral": True},
    ]
    fake.script(
        [
            tool_reply(
                [("c1", "weather", '{"city": "Zürich 🌍"}'), ("c2", "secret", '{"user": "ada"}')],
                text="Let me check.",
                fragment=3,
            ),
            text_reply("It is ", "sunny."),
        ]
    )
    outputs = await collect(agent(client), make_turn(config(fake, tools=tools)))
    calls = (
        ToolCall(id="c1", name="weather", arguments='{"city": "Zürich 🌍"}'),
        ToolCall(id="c2", name="secret", arguments='{"user": "ada"}'),
    )
    assert outputs == [
        TextDelta(text="Let me check."),
        ToolCallsRequested(calls=calls, text="Let me check.", ephemeral=False),
        ToolResultReady(
            call_id="c1", name="weather", result={"args": {"city": "Zürich 🌍"}, "answer": "sunny"}
        ),
        ToolResultReady(
            call_id="c2", name="secret", result={"args": {"user": "ada"}, "answer": "1234"}, ephemeral=True
        ),
        TextDelta(text="It is "),
        TextDelta(text="sunny."),
    ]
    first, second = fake.bodies
    assert first["tools"][0] == {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {}},
            "description": "Weather",
        },
    }
    assert "tool_choice" not in first
    assert second["messages"][-3] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }
    assert second["messages"][-2]["role"] == "tool"
    assert second["messages"][-2]["tool_call_id"] == "c1"
    assert json.loads(second["messages"][-1]["content"]) == {"args": {"user": "ada"}, "answer": "1234"}


@bounded(5)
async def test_ephemeral_only_when_every_call_is(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    tools = [{"name": "secret", "url": json_tool(fake, "/secret", 1), "ephemeral": True}]
    fake.script([tool_reply([("c1", "secret", "{}")]), text_reply("done")])
    outputs = await collect(agent(client), make_turn(config(fake, tools=tools)))
    requested = [o for o in outputs if isinstance(o, ToolCallsRequested)]
    assert requested[0].ephemeral


@bounded(5)
async def test_unknown_tool_bad_arguments_and_no_process(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    tools = [
        {"name": "weather", "url": json_tool(fake, "/weather", "sunny")},
        {"name": "local"},  # runs in an agent process
    ]
    fake.script(
        [
            tool_reply([("c1", "nope", "{}"), ("c2", "weather", '{"city": '), ("c3", "local", "{}")]),
            text_reply("sorry"),
        ]
    )
    outputs = await collect(agent(client), make_turn(config(fake, tools=tools)))
    results = {o.call_id: o.result for o in outputs if isinstance(o, ToolResultReady)}
    assert results["c1"] == {"error": "unknown tool nope"}
    assert results["c2"]["error"].startswith("invalid JSON arguments for tool weather")
    assert results["c3"] == {"error": "tool local runs in an agent process and none is connected"}
    assert [r.path for r in fake.requests if r.path == "/weather"] == []
    assert text_of(outputs) == "sorry"


class SlowProcess:
    """An agent-process runner stand-in whose tools take a while (they run concurrently)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.05)
        self.running -= 1
        return {"ran": call.id}


@bounded(5)
async def test_process_tools_run_concurrently(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    process = SlowProcess()
    fake.script([tool_reply([("a", "local", "{}"), ("b", "local", "{}")]), text_reply("ok")])
    outputs = await collect(agent(client, process), make_turn(config(fake, tools=[{"name": "local"}])))
    assert process.peak == 2
    assert [o.result for o in outputs if isinstance(o, ToolResultReady)] == [{"ran": "a"}, {"ran": "b"}]


@pytest.mark.parametrize("max_rounds", [0, 2])
@bounded(5)
async def test_tool_round_limit(fake: FakeOpenAI, client: httpx.AsyncClient, max_rounds: int) -> None:
    tools = [{"name": "weather", "url": json_tool(fake, "/weather", "sunny")}]
    cfg = config(fake, tools=tools)
    cfg["limits"] = {"max_tool_rounds": max_rounds}
    rounds = [tool_reply([(f"c{i}", "weather", "{}")]) for i in range(max_rounds + 1)]
    fake.script([*rounds, text_reply("giving up")])
    outputs = await collect(agent(client), make_turn(cfg))
    results = [o.result for o in outputs if isinstance(o, ToolResultReady)]
    assert results[-1] == {"error": "tool round limit reached"}
    assert len(results) == max_rounds + 1
    assert len([r for r in fake.requests if r.path == "/weather"]) == max_rounds
    bodies = fake.bodies
    assert len(bodies) == max_rounds + 2
    assert bodies[-1]["tool_choice"] == "none"
    assert all("tool_choice" not in b for b in bodies[:-1])
    assert text_of(outputs) == "giving up"


@bounded(5)
async def test_tools_asked_for_despite_tool_choice_none_end_the_turn(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    cfg = config(fake, tools=[{"name": "weather", "url": json_tool(fake, "/weather", 1)}])
    cfg["limits"] = {"max_tool_rounds": 0}
    fake.script([tool_reply([("c1", "weather", "{}")]), tool_reply([("c2", "weather", "{}")], text="Hm.")])
    outputs = await collect(agent(client), make_turn(cfg))
    assert text_of(outputs) == "Hm."
    assert len(fake.bodies) == 2


# --- failures ----------------------------------------------------------------------------------


@bounded(5)
async def test_http_error_reports_status_and_message(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([error_reply(500, "model overloaded " + "x" * 500)])
    with pytest.raises(AgentError) as caught:
        await collect(agent(client), make_turn(config(fake)))
    assert "HTTP 500: model overloaded" in caught.value.message
    assert len(caught.value.message) < 300


@bounded(5)
async def test_endpoint_down(client: httpx.AsyncClient) -> None:
    cfg = {"answer": "llm", "llm": {"model": "m", "base_url": f"http://127.0.0.1:{unused_port()}/v1"}}
    with pytest.raises(AgentError, match="unreachable"):
        await collect(agent(client), make_turn(cfg))


@bounded(5)
async def test_malformed_chunk(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = sse([chunk({"content": "ok"}), "{broken"])
    fake.script([stream_reply(body)])
    outputs: list[AgentOutput] = []
    with pytest.raises(AgentError, match="malformed stream chunk"):
        async for item in agent(client).run(make_turn(config(fake))):
            outputs.append(item)
    assert outputs == [TextDelta(text="ok")]


@bounded(5)
async def test_error_object_inside_the_stream(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([stream_reply(sse([{"error": {"message": "context length exceeded"}}]))])
    with pytest.raises(AgentError, match="context length exceeded"):
        await collect(agent(client), make_turn(config(fake)))


@pytest.mark.parametrize("headers_first", [True, False])
@bounded(5)
async def test_no_first_token(fake: FakeOpenAI, client: httpx.AsyncClient, headers_first: bool) -> None:
    fake.script([stalled(headers_first=headers_first)])
    started = asyncio.get_running_loop().time()
    with pytest.raises(AgentError, match=r"no first token within 0\.3 s"):
        await collect(agent(client), make_turn(config(fake, first_token_timeout_seconds=0.3)))
    assert asyncio.get_running_loop().time() - started < 2
    await asyncio.wait_for(fake.client_gone.wait(), 2)


@bounded(5)
async def test_stall_after_the_first_token(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = sse([chunk({"content": "partial"})], done=False)
    fake.script([Reply(headers={"content-type": "text/event-stream"}, pieces=[body], stall_after=10)])
    outputs: list[AgentOutput] = []
    with pytest.raises(AgentError, match="timed out"):
        async for item in agent(client).run(
            make_turn(config(fake, request_timeout_seconds=0.3, first_token_timeout_seconds=0.3))
        ):
            outputs.append(item)
    assert outputs == [TextDelta(text="partial")]


@bounded(5)
async def test_connection_dropped_mid_stream(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    body = sse([chunk({"content": "par"})], done=False)
    fake.script([Reply(headers={"content-type": "text/event-stream"}, pieces=[body], abort=True)])
    with pytest.raises(AgentError, match="failed"):
        await collect(agent(client), make_turn(config(fake)))


# --- cancellation -------------------------------------------------------------------------------


@bounded(5)
async def test_aclose_closes_the_upstream_response(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([text_reply(*[f"t{i} " for i in range(200)], delay=0.02)])
    stream = agent(client).run(make_turn(config(fake)))
    assert isinstance(stream, AsyncIterator)
    first = await anext(stream)
    assert first == TextDelta(text="t0 ")
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(fake.client_gone.wait(), 1)


@bounded(5)
async def test_cancelling_the_consumer_task_closes_the_upstream(
    fake: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake.script([text_reply(*[f"t{i} " for i in range(200)], delay=0.02)])
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in agent(client).run(make_turn(config(fake))):
            seen.set()

    task = asyncio.create_task(consume())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.client_gone.wait(), 1)


@bounded(5)
async def test_connection_is_reused_after_done(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.script([text_reply("a"), text_reply("b")])
    llm = agent(client)
    assert text_of(await collect(llm, make_turn(config(fake)))) == "a"
    assert text_of(await collect(llm, make_turn(config(fake)))) == "b"
    assert not fake.client_gone.is_set()
    assert fake.connections == 1
