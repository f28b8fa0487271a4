"""`WebhookAgent` against a real fake backend on 127.0.0.1, and the signature helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.agents.base import AgentOutput, ChatMessage, TextDelta, ToolCall, Turn
from gateway.agents.webhook import WebhookAgent, sign, verify
from gateway.errors import AgentError
from tests.fakes import bounded, make_turn, unused_port
from tests.fakes.scripted_http import Reply
from tests.fakes.webhook_backend import (
    FakeWebhookBackend,
    json_reply,
    ndjson_reply,
    raw_reply,
    sse_openai_reply,
    sse_token_reply,
    stalled_reply,
    text_reply,
)

SECRET = "whsec_test"


@pytest.fixture
async def backend() -> AsyncIterator[FakeWebhookBackend]:
    async with FakeWebhookBackend() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def config(url: str, **webhook: Any) -> dict[str, Any]:
    return {"answer": "webhook", "webhook": {"url": url, **webhook}}


def agent(client: httpx.AsyncClient) -> WebhookAgent:
    return WebhookAgent(client, {"HOOK_SECRET": SECRET})


async def collect(turn: Turn, client: httpx.AsyncClient) -> list[AgentOutput]:
    return [item async for item in agent(client).run(turn)]


def joined(outputs: list[AgentOutput]) -> str:
    return "".join(o.text for o in outputs if isinstance(o, TextDelta))


@bounded(5)
async def test_request_body_and_signature(backend: FakeWebhookBackend, client: httpx.AsyncClient) -> None:
    backend.script([json_reply("hello")])
    history = (
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="", tool_calls=(ToolCall(id="c", name="t", arguments="{}"),)),
        ChatMessage(role="tool", content="{}", tool_call_id="c"),
        ChatMessage(role="assistant", content="an answer"),
        ChatMessage(role="user", content="second"),
        ChatMessage(role="assistant", content="from a human", source="human"),
    )
    turn = make_turn(
        config(backend.url, secret_env="HOOK_SECRET", history_messages=3),
        text="what now?",
        history=history,
        context={"page": "cart", "_notes": ["VIP customer"], "_internal": 1},
        metadata={"plan": "pro"},
    )
    assert await collect(turn, client) == [TextDelta(text="hello")]
    [request] = backend.requests
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "sessionId": "chat-test",
        "agent": "support",
        "channel": "chat",
        "contact": {"id": "user-1", "name": "Ada"},
        "message": {"messageId": "msg_user", "text": "what now?"},
        "history": [
            {"role": "assistant", "text": "an answer", "source": "agent"},
            {"role": "user", "text": "second"},
            {"role": "assistant", "text": "from a human", "source": "human"},
        ],
        "context": {"page": "cart"},
        "metadata": {"plan": "pro"},
        "notes": ["VIP customer"],
    }
    timestamp = request.headers["x-gateway-timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert request.headers["x-gateway-signature"] == sign(SECRET, timestamp, request.body)
    assert verify(SECRET, timestamp, request.body, request.headers["x-gateway-signature"])


@bounded(5)
async def test_unsigned_without_secret_and_no_contact(
    backend: FakeWebhookBackend, client: httpx.AsyncClient
) -> None:
    backend.script([json_reply("hi")])
    await collect(make_turn(config(backend.url, history_messages=0), contact=None), client)
    request = backend.requests[0]
    assert "x-gateway-signature" not in request.headers
    assert request.json()["contact"] is None
    assert request.json()["history"] == []


@bounded(5)
async def test_missing_secret_variable(backend: FakeWebhookBackend, client: httpx.AsyncClient) -> None:
    with pytest.raises(AgentError, match="NOPE"):
        await collect(make_turn(config(backend.url, secret_env="NOPE")), client)


@pytest.mark.parametrize(
    "reply",
    [
        sse_openai_reply(["Hé", "llo 🌍"]),
        sse_openai_reply(["Hé", "llo 🌍"], done=False),
        sse_token_reply(["Hé", "llo 🌍"]),
        sse_token_reply(["Hé", "llo 🌍"], done=True),
        ndjson_reply(["Hé", "llo 🌍"]),
        ndjson_reply(["Hé", "llo 🌍"], key="text", ctype="application/jsonl"),
        text_reply(["Hé".encode(), "llo 🌍".encode()]),
        text_reply([b"H\xc3", b"\xa9llo \xf0\x9f", b"\x8c\x8d"]),  # split inside characters
        text_reply(["Hé".encode("latin-1"), "llo ¤".encode("latin-1")], ctype="text/plain; charset=latin-1"),
        json_reply("Héllo 🌍"),
    ],
    ids=[
        "sse-openai",
        "sse-openai-no-done",
        "sse-token",
        "sse-token-done",
        "ndjson",
        "jsonl-text",
        "chunked",
        "chunked-mid-char",
        "latin1",
        "json",
    ],
)
@bounded(5)
async def test_answer_formats(backend: FakeWebhookBackend, client: httpx.AsyncClient, reply: Reply) -> None:
    backend.script([reply])
    outputs = await collect(make_turn(config(backend.url)), client)
    expected = "Héllo ¤" if "latin-1" in reply.headers["content-type"] else "Héllo 🌍"
    assert joined(outputs) == expected
    assert all(isinstance(o, TextDelta) and o.text for o in outputs)


@bounded(5)
async def test_plain_sse_data_and_no_answer(backend: FakeWebhookBackend, client: httpx.AsyncClient) -> None:
    backend.script(
        [
            Reply(headers={"content-type": "text/event-stream"}, pieces=[b"data: plain words\n\n"]),
            Reply(status=204),
        ]
    )
    assert joined(await collect(make_turn(config(backend.url)), client)) == "plain words"
    assert await collect(make_turn(config(backend.url)), client) == []


@bounded(5)
async def test_tokens_stream_as_they_arrive(backend: FakeWebhookBackend, client: httpx.AsyncClient) -> None:
    backend.script([sse_token_reply(["a", "b", "c"], delay=0.1)])
    stamps: list[float] = []
    async for _ in agent(client).run(make_turn(config(backend.url))):
        stamps.append(asyncio.get_running_loop().time())
    assert len(stamps) == 3
    assert stamps[2] - stamps[0] > 0.15


@bounded(5)
async def test_non_2xx_reports_status_and_a_short_body(
    backend: FakeWebhookBackend, client: httpx.AsyncClient
) -> None:
    backend.script([raw_reply(503, b"down for maintenance " * 50)])
    with pytest.raises(AgentError) as caught:
        await collect(make_turn(config(backend.url)), client)
    message = caught.value.message
    assert "HTTP 503: down for maintenance" in message
    assert len(message) < len(backend.url) + 250


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (
            Reply(headers={"content-type": "application/x-ndjson"}, pieces=[b'{"token": "a"}\n{bad\n']),
            "malformed",
        ),
        (Reply(headers={"content-type": "text/event-stream"}, pieces=[b"data: {bad\n\n"]), "malformed"),
        (Reply(headers={"content-type": "text/html"}, pieces=[b"<html>"]), "unsupported content type"),
        (
            json_reply("x").__class__(headers={"content-type": "application/json"}, pieces=[b"[1]"]),
            "malformed",
        ),
        (
            Reply(headers={"content-type": "application/x-ndjson"}, pieces=[b'{"error": "backend broke"}\n']),
            "backend broke",
        ),
        (
            Reply(
                headers={"content-type": "text/event-stream"},
                pieces=[b'data: {"error": {"message": "nope"}}\n\n'],
            ),
            "nope",
        ),
    ],
    ids=["ndjson", "sse", "html", "json-array", "ndjson-error", "sse-error"],
)
@bounded(5)
async def test_bad_answers(
    backend: FakeWebhookBackend, client: httpx.AsyncClient, reply: Reply, match: str
) -> None:
    backend.script([reply])
    with pytest.raises(AgentError, match=match):
        await collect(make_turn(config(backend.url)), client)


@pytest.mark.parametrize("headers_first", [False, True])
@bounded(5)
async def test_timeout(backend: FakeWebhookBackend, client: httpx.AsyncClient, headers_first: bool) -> None:
    backend.script([stalled_reply(headers_first=headers_first)])
    started = asyncio.get_running_loop().time()
    with pytest.raises(AgentError, match="timed out"):
        await collect(make_turn(config(backend.url, timeout_seconds=0.3)), client)
    assert asyncio.get_running_loop().time() - started < 2


@bounded(5)
async def test_unreachable(client: httpx.AsyncClient) -> None:
    with pytest.raises(AgentError, match="unreachable"):
        await collect(make_turn(config(f"http://127.0.0.1:{unused_port()}/hook")), client)


@bounded(5)
async def test_aclose_hangs_up(backend: FakeWebhookBackend, client: httpx.AsyncClient) -> None:
    backend.script([sse_token_reply([f"t{i}" for i in range(100)], delay=0.02)])
    stream = agent(client).run(make_turn(config(backend.url)))
    assert await anext(stream) == TextDelta(text="t0")
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(backend.client_gone.wait(), 1)


def test_sign_and_verify() -> None:
    body = b'{"a": 1}'
    signature = sign("s3cret", "1700000000", body)
    assert signature.startswith("sha256=") and len(signature) == 71
    assert verify("s3cret", "1700000000", body, signature, now=1700000100)
    assert not verify("s3cret", "1700000000", body, signature, now=1700000301)
    assert not verify("s3cret", "1700000000", body, signature, tolerance_seconds=10, now=1699999980)
    assert not verify("other", "1700000000", body, signature, now=1700000000)
    assert not verify("s3cret", "1700000000", body + b" ", signature, now=1700000000)
    assert not verify("s3cret", "1700000001", body, signature, now=1700000000)
    assert not verify("s3cret", "soon", body, signature, now=1700000000)
    assert not verify("s3cret", "1700000000", body, "sha256=zz€", now=1700000000)
