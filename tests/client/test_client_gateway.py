"""The shipped client against the real gateway (uvicorn on 127.0.0.1), end to end.

A person talks over the chat WebSocket; the agent lives in this test's
`gateway.client.Gateway`. LLMs are tests/fakes/openai_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.client import AuthenticationError, CommandError, Gateway, ReplyWriter, Session, Turn
from tests.conftest import ADMIN, Running, make_settings, mint, run_gateway
from tests.fakes.openai_server import FakeOpenAI, text_reply, tool_reply

ORIGINS = ["http://127.0.0.1:*"]
FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.2, "request_timeout": 5.0}


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await ws.recv()))


async def until(ws: Any, event: str, timeout: float = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws)
            if frame["event"] == event:
                return frame, seen
            seen.append(frame)


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving(gw: Gateway) -> AsyncIterator[Gateway]:
    gw.start()
    try:
        await gw.wait_ready(10)
        yield gw
    finally:
        async with asyncio.timeout(10):
            await gw.close()


@contextlib.asynccontextmanager
async def chat(g: Running, agent: str) -> AsyncIterator[tuple[Any, str]]:
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g, agent)}") as ws:
        started = await recv(ws)
        assert started["event"] == "chat.started"
        yield ws, started["sessionId"]


class Proxy:
    """A TCP relay to the gateway that the test can cut (a network outage) and restore."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.down = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.down = True
        for writer in self.writers:
            writer.close()
        self.writers.clear()


async def test_a_process_answers_chat_turns_end_to_end(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g:
        gw = Gateway(g.url, api_key=ADMIN, **FAST)
        byo = gw.agent("byo", allowed_origins=ORIGINS, greeting=None)
        turns: list[Turn] = []

        @byo.on_turn
        async def answer(turn: Turn, reply: ReplyWriter) -> None:
            turns.append(turn)
            async with reply:
                for word in f"you said {turn.text[::-1]}".split(" "):
                    await reply.write(word + " ")

        async with serving(gw), chat(g, "byo") as (ws, sid):
            await ws.send(json.dumps({"event": "message", "text": "hello"}))
            done, before = await until(ws, "chat.done")
            assert done["text"] == "you said olleh "
            assert [f["text"] for f in before if f["event"] == "chat.token"] == ["you ", "said ", "olleh "]
            await ws.send(json.dumps({"event": "message", "text": "again"}))
            done, _ = await until(ws, "chat.done")
            assert done["text"] == "you said niaga "
        first, second = turns
        assert (first.session_id, first.agent_id, first.channel, first.history) == (sid, "byo", "chat", [])
        assert done["messageId"] == second.message_id
        assert [(m["role"], m["text"]) for m in second.history] == [
            ("user", "hello"),
            ("assistant", "you said olleh "),
        ]
        messages = await g.runtime.store.messages(sid)
        assert [(m.role, m.text) for m in messages][-1] == ("assistant", "you said niaga ")


async def test_tools_run_in_the_process_and_the_model_sees_their_results(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script(
            [
                tool_reply(
                    [("call-1", "lookup_order", '{"order_id": "ORD-7"}'), ("call-2", "get_time", "{}")]
                ),
                text_reply("It ships ", "today"),
            ]
        )
        async with run_gateway(make_settings(sqlite_url)) as g:
            gw = Gateway(g.url, api_key=ADMIN, **FAST)
            shop = gw.agent(
                "shop",
                prompt="You are Nova.",
                llm={"base_url": fake.url, "model": "fake-model", "first_token_timeout_seconds": 5},
                allowed_origins=ORIGINS,
            )
            calls: list[tuple[str, str]] = []
            tool_events: list[dict[str, Any]] = []

            @shop.tool
            async def lookup_order(order_id: str, session: Session) -> dict[str, Any]:
                """Look up an order by its id.

                Args:
                    order_id: Like ORD-12345.
                """
                calls.append((order_id, session.id))
                return {"order_id": order_id, "status": "shipped", "eta": "today"}

            @shop.tool(ephemeral=True)
            def get_time() -> str:
                """The current time."""
                return "12:34"

            @shop.on("llm.toolResult")
            async def seen(event: dict[str, Any]) -> None:
                tool_events.append(event)

            async with serving(gw), chat(g, "shop") as (ws, sid):
                await ws.send(json.dumps({"event": "message", "text": "where is ORD-7?"}))
                done, _ = await until(ws, "chat.done")
                assert done["text"] == "It ships today"
                await wait_for(lambda: any(e["toolCallId"] == "call-1" for e in tool_events))
    assert calls == [("ORD-7", sid)]
    declared = {t["function"]["name"]: t["function"] for t in fake.bodies[0]["tools"]}
    assert declared["lookup_order"] == {
        "name": "lookup_order",
        "description": "Look up an order by its id.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "Like ORD-12345."}},
            "required": ["order_id"],
        },
    }
    results = {m["tool_call_id"]: m["content"] for m in fake.bodies[1]["messages"] if m["role"] == "tool"}
    assert json.loads(results["call-1"]) == {"order_id": "ORD-7", "status": "shipped", "eta": "today"}
    assert results["call-2"] == "12:34"  # a string result is given to the model as is
    by_id = {e["toolCallId"]: e for e in tool_events}
    assert by_id["call-1"]["result"] == {"order_id": "ORD-7", "status": "shipped", "eta": "today"}
    # Ephemeral: no event carries the result (the gateway currently emits no llm.toolResult at all).
    assert "result" not in by_id.get("call-2", {})


async def test_session_commands_steer_the_conversation(sqlite_url: str) -> None:
    async with FakeOpenAI() as fake:
        fake.script([text_reply("Hi Ada"), text_reply("fine")])
        async with run_gateway(make_settings(sqlite_url)) as g:
            gw = Gateway(g.url, api_key=ADMIN, **FAST)
            support = gw.agent(
                "support",
                prompt="You help {{customer}} of {{company}}.",
                llm={"base_url": fake.url, "model": "fake-model"},
                allowed_origins=ORIGINS,
            )

            personalised = asyncio.Event()

            @support.on("session.started")
            async def personalise(event: dict[str, Any], session: Session) -> None:
                await session.set_prompt_vars(customer="Ada", company="Acme")
                await session.add_context("Ada is a VIP customer.")
                personalised.set()

            async with serving(gw), chat(g, "support") as (ws, sid):
                session = support.session(sid)
                async with asyncio.timeout(10):
                    await personalised.wait()
                await ws.send(json.dumps({"event": "message", "text": "hello"}))
                await until(ws, "chat.done")
                history = await session.get_history()
                assert [(m["role"], m["text"], m["source"]) for m in history] == [
                    ("user", "hello", "user"),
                    ("assistant", "Hi Ada", "agent"),
                ]
                await session.set_history(
                    [{"role": "user", "text": "I am Ada"}, {"role": "assistant", "text": "Hi"}]
                )
                await session.set_prompt("Short answers for {{customer}}.")
                await ws.send(json.dumps({"event": "message", "text": "next"}))
                await until(ws, "chat.done")
                await session.clear_history()
                assert await session.get_history() == []
                with pytest.raises(CommandError) as info:
                    await support.session("chat-nope").add_context("x")
                assert info.value.code == "unknown_session"
                await session.end()
                ended, _ = await until(ws, "chat.ended")
                assert ended["reason"] == "closed"
    first, second = fake.bodies
    assert first["messages"][0]["content"].startswith("You help Ada of Acme.")
    assert "Ada is a VIP customer." in first["messages"][0]["content"]
    assert second["messages"][0]["content"].startswith("Short answers for Ada.")
    assert [(m["role"], m["content"]) for m in second["messages"][1:]] == [
        ("user", "I am Ada"),
        ("assistant", "Hi"),
        ("user", "next"),
    ]


async def test_a_process_that_reconnects_gets_what_it_missed(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g:
        port = int(g.url.rsplit(":", 1)[1])
        async with Proxy(port) as proxy:
            gw = Gateway(proxy.url, api_key=ADMIN, **FAST)
            byo = gw.agent("byo", allowed_origins=ORIGINS, limits={"process_reconnect_seconds": 20})
            events: list[dict[str, Any]] = []

            @byo.on("*")
            async def record(event: dict[str, Any]) -> None:
                events.append(event)

            @byo.on_turn
            async def answer(turn: Turn) -> str:
                return f"echo: {turn.text}"

            async with serving(gw):
                async with chat(g, "byo") as (ws, sid1):
                    await ws.send(json.dumps({"event": "message", "text": "first"}))
                    assert (await until(ws, "chat.done"))[0]["text"] == "echo: first"
                await wait_for(lambda: any(e["event"] == "bot.message" for e in events))
                seq_before = byo.last_seq
                assert seq_before is not None and gw.connections == 1

                proxy.cut()  # the network goes away
                await wait_for(lambda: not gw.connected)
                await wait_for(lambda: "byo" not in g.runtime.agents.hub.connected())
                async with chat(g, "byo") as (ws, sid2):
                    await ws.send(json.dumps({"event": "message", "text": "while away"}))
                    await asyncio.sleep(0.3)  # the turn waits for a process
                    proxy.down = False  # the network is back: the client reconnects by itself
                    done, _ = await until(ws, "chat.done", timeout=15)
                    assert done["text"] == "echo: while away"
                assert gw.connections == 2
                await wait_for(
                    lambda: any(e.get("sessionId") == sid2 and e["event"] == "bot.message" for e in events)
                )
    missed = [e for e in events if isinstance(e.get("seq"), int) and e["seq"] > seq_before]
    kinds = [(e["event"], e.get("sessionId")) for e in missed]
    assert ("agent.disconnected", None) in kinds
    assert ("session.started", sid2) in kinds and ("user.message", sid2) in kinds
    assert kinds.index(("user.message", sid2)) < kinds.index(("bot.message", sid2))
    seqs = [e["seq"] for e in events if "seq" in e and e["event"] != "stream.caughtUp"]
    assert len(seqs) == len(set(seqs))  # nothing twice
    assert [e["event"] for e in events].count("stream.caughtUp") == 1
    assert ("user.message", sid1) not in kinds  # what it had seen is not replayed


async def test_a_wrong_api_key_fails_fast(gateway: Running) -> None:
    gw = Gateway(gateway.url, api_key="sk_wrong", **FAST)
    gw.agent("nobody")
    with pytest.raises(AuthenticationError):
        async with asyncio.timeout(10):
            await gw.run()


def load_example(name: str) -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_examples_run_against_the_gateway(sqlite_url: str) -> None:
    tool_agent, byo_agent = load_example("tool_agent"), load_example("byo_llm_agent")
    async with FakeOpenAI() as fake:
        fake.script(
            [
                tool_reply([("c1", "lookup_order", '{"order_id": "ORD-1001"}')]),
                text_reply("Shipped, ", "tomorrow."),
            ]
        )
        async with run_gateway(make_settings(sqlite_url)) as g:
            gw = Gateway(g.url, api_key=ADMIN, **FAST)
            tool_agent.build(gw, base_url=fake.url, model="fake-model")
            byo_agent.build(gw)
            async with serving(gw):
                async with chat(g, "support") as (ws, sid):
                    for _ in range(500):  # the example's session.started handler sets a prompt variable
                        session = await g.runtime.store.session(sid)
                        if session is not None and session.prompt_vars:
                            break
                        await asyncio.sleep(0.02)
                    await ws.send(json.dumps({"event": "message", "text": "Where is ORD-1001?"}))
                    assert (await until(ws, "chat.done"))[0]["text"] == "Shipped, tomorrow."
                async with chat(g, "byo") as (ws, _sid):
                    await ws.send(json.dumps({"event": "message", "text": "hello"}))
                    assert (await until(ws, "chat.done"))[0]["text"].startswith("Hello! I'm a tiny")
                    await ws.send(json.dumps({"event": "message", "text": "abc def"}))
                    assert (await until(ws, "chat.done"))[0]["text"] == "Backwards, that is: fed cba "
                    await ws.send(json.dumps({"event": "message", "text": "/history"}))
                    done, _ = await until(ws, "chat.done")
                    assert done["text"] == "This conversation has 5 messages so far. "
    tool_msg = next(m for m in fake.bodies[1]["messages"] if m["role"] == "tool")
    assert json.loads(tool_msg["content"])["status"] == "shipped"
    assert "The customer is unknown." in fake.bodies[0]["messages"][0]["content"]
