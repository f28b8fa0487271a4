"""The client against a small fake gateway: a real WebSocket server on 127.0.0.1.

The fake speaks the frames of docs/agents.md "Agent processes" and records what
the client sends; each test drives it frame by frame.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.client import (
    AuthenticationError,
    Backoff,
    CommandError,
    Gateway,
    RegistrationError,
    ReplyWriter,
    RequestTimeout,
    Session,
    Turn,
)

KEY = "sk_fake"
FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.2, "request_timeout": 2.0}


class FakeConn:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def next(self, event: str | None = None, timeout: float = 5) -> dict[str, Any]:
        """The next frame (of type `event`, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if event is None or frame.get("event") == event:
                    return frame

    async def drop(self) -> None:
        await self.ws.close(1011, "fake gateway restarting")


class FakeGateway:
    """Answers `agent.register` (replaying stored events after `last_seq`) and `ping`."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[FakeConn] = asyncio.Queue()
        self.attempts: list[float] = []  # loop time of every connection attempt
        self.registers: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # "persisted" events, for replays
        self.seq = 0
        self.auto_pong = True
        self.register_error: dict[str, Any] | None = None
        self.reject_next = 0  # close the next N connections at once
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def event(self, kind: str, agent: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        frame = {"event": kind, "seq": self.seq, "ts": 0, "agent": agent, **fields}
        self.events.append(frame)
        return frame

    async def handler(self, ws: ServerConnection) -> None:
        self.attempts.append(asyncio.get_running_loop().time())
        if ws.request is None or ws.request.headers.get("Authorization") != f"Bearer {KEY}":
            await ws.close(4401, "invalid API key")
            return
        if self.reject_next:
            self.reject_next -= 1
            await ws.close(1013, "try again later")
            return
        conn = FakeConn(ws)
        self.connections.put_nowait(conn)
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("event")
                if kind == "agent.register":
                    self.registers.append(frame)
                    await self._register(conn, frame)
                elif kind == "ping" and self.auto_pong:
                    await conn.send({"event": "pong"})
                conn.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    async def _register(self, conn: FakeConn, frame: dict[str, Any]) -> None:
        rid = frame.get("request_id")
        if self.register_error is not None:
            await conn.send({"event": "error", "request_id": rid, **self.register_error})
            return
        agent_id, last = frame["agent_id"], frame.get("last_seq")
        if last is not None:
            replay = [e for e in self.events if e["agent"] == agent_id and e["seq"] > last]
            for event in replay:
                await conn.send(event)
            cursor = replay[-1]["seq"] if replay else last
            await conn.send({"event": "stream.caughtUp", "agent_id": agent_id, "seq": cursor})
        await conn.send(
            {"event": "agent.registered", "agent_id": agent_id, "seq": self.seq, "request_id": rid}
        )


@asynccontextmanager
async def fake_gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        fake.server = server
        yield fake


@asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[Gateway]:
    task = gw.start()
    try:
        yield gw
    finally:
        async with asyncio.timeout(5):
            await gw.close()
        assert task.done()


async def until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------- registering


async def test_registers_every_agent_with_its_config_and_tools() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        shop = gw.agent("shop", prompt="Hi {{name}}", llm={"base_url": "http://x/v1", "model": "m"})

        @shop.tool(ephemeral=True)
        def get_time() -> str:
            """The time."""
            return "12:00"

        byo = gw.agent("byo", greeting="Hello")

        @byo.on_turn
        async def answer(turn: Turn) -> str:
            return "ok"

        async with running(gw):
            await gw.wait_ready(5)
            conn = await fake.connections.get()
            first, second = await conn.next("agent.register"), await conn.next("agent.register")
        assert first["agent_id"] == "shop" and "last_seq" not in first
        assert first["config"] == {
            "prompt": "Hi {{name}}",
            "llm": {"base_url": "http://x/v1", "model": "m"},
            "tools": [
                {
                    "name": "get_time",
                    "description": "The time.",
                    "parameters": {"type": "object", "properties": {}},
                    "ephemeral": True,
                }
            ],
        }
        assert second == {
            "event": "agent.register",
            "agent_id": "byo",
            "config": {"greeting": "Hello"},
            "request_id": second["request_id"],
        }
        assert gw.agents["shop"].last_seq == 0 and gw.connections == 1


async def test_a_wrong_key_is_fatal() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key="sk_wrong", **FAST)
        gw.agent("a")
        with pytest.raises(AuthenticationError, match="4401"):
            async with asyncio.timeout(5):
                await gw.run()
        assert len(fake.attempts) == 1  # no retry with a key that cannot work


async def test_a_refused_config_is_fatal() -> None:
    async with fake_gateway() as fake:
        fake.register_error = {"code": "invalid_config", "message": "agent.register a: limits: bad"}
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        gw.agent("a", limits={"idle_timeout_seconds": -1})
        gw.start()
        with pytest.raises(RegistrationError) as info:
            await gw.wait_ready(5)
        assert info.value.agent_id == "a" and info.value.code == "invalid_config"
        await gw.close()


# ------------------------------------------------------------------- events


async def test_events_reach_handlers_in_order_and_a_failing_handler_breaks_nothing() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        support = gw.agent("support")
        seen: list[tuple[str, Any]] = []
        threads: list[str] = []

        @support.on("user.message")
        async def on_message(event: dict[str, Any], session: Session) -> None:
            seen.append(("message", (event["text"], session.id, session.agent_id)))
            if event["text"] == "boom":
                raise RuntimeError("handler bug")

        @support.on("session.ended")
        def on_ended(event: dict[str, Any]) -> None:  # sync, one argument: runs in a thread
            threads.append(threading.current_thread().name)
            seen.append(("ended", event["reason"]))

        @support.on("*")
        async def on_any(event: dict[str, Any], session: Session | None) -> None:
            seen.append(("any", (event["event"], session.id if session else None)))

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.send(fake.event("agent.connected", "support"))
            await conn.send(fake.event("user.message", "support", sessionId="chat-1", text="boom"))
            await conn.send(fake.event("user.message", "support", sessionId="chat-1", text="fine"))
            await conn.send(fake.event("session.ended", "support", sessionId="chat-1", reason="closed"))
            await conn.send(fake.event("user.message", "other-agent", sessionId="x", text="not mine"))
            await until(lambda: len(seen) == 7)
            await asyncio.sleep(0.05)
        assert seen == [
            ("any", ("agent.connected", None)),
            ("message", ("boom", "chat-1", "support")),
            ("any", ("user.message", "chat-1")),
            ("message", ("fine", "chat-1", "support")),
            ("any", ("user.message", "chat-1")),
            ("ended", "closed"),
            ("any", ("session.ended", "chat-1")),
        ]
        assert threads and threads[0] != threading.main_thread().name
        assert support.last_seq == 4


# -------------------------------------------------------------------- tools


async def test_tool_calls_run_here_and_their_results_go_back() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        shop = gw.agent("shop", llm={"model": "m"})
        other = gw.agent("other", llm={"model": "m"})
        sessions: list[Session] = []

        @shop.tool
        async def lookup_order(order_id: str, session: Session) -> dict[str, Any]:
            """Look up an order."""
            sessions.append(session)
            return {"order_id": order_id, "status": "shipped"}

        @shop.tool
        def slow_sync(n: int) -> list[int]:
            return [n, n + 1]

        @shop.tool
        async def broken() -> None:
            raise ValueError("no such order")

        @shop.tool
        async def nothing() -> None:
            return None

        @shop.tool
        def huge() -> str:
            return "x" * 1_100_000  # larger than the gateway reads

        @other.tool(name="lookup_order")
        async def other_lookup(order_id: str) -> str:
            return "from other"

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            # `tool.call` has no agent_id: the session's events say which agent it is.
            await conn.send(fake.event("user.message", "shop", sessionId="chat-s", text="hi"))
            await conn.send(fake.event("user.message", "other", sessionId="chat-o", text="hi"))
            calls = [
                ("chat-s", "c1", "lookup_order", {"order_id": "7"}),
                ("chat-o", "c2", "lookup_order", {"order_id": "8"}),
                ("chat-s", "c3", "slow_sync", {"n": 1}),
                ("chat-s", "c4", "broken", {}),
                ("chat-s", "c5", "nothing", {}),
                ("chat-s", "c6", "missing", {}),
                ("chat-s", "c7", "lookup_order", {"wrong": 1}),
                ("chat-s", "c8", "lookup_order", "not an object"),
                ("chat-s", "c9", "huge", {}),
            ]
            for sid, cid, name, args in calls:
                await conn.send(
                    {
                        "event": "tool.call",
                        "session_id": sid,
                        "tool_call_id": cid,
                        "name": name,
                        "arguments": args,
                    }
                )
            results = {}
            for _ in calls:
                frame = await conn.next("tool.result")
                results[frame["tool_call_id"]] = frame
        assert results["c1"] == {
            "event": "tool.result",
            "session_id": "chat-s",
            "tool_call_id": "c1",
            "result": {"order_id": "7", "status": "shipped"},
        }
        assert sessions == [Session(gw, "shop", "chat-s")]
        assert results["c2"]["result"] == "from other"
        assert results["c3"]["result"] == [1, 2]
        assert results["c4"]["result"] == {"error": "ValueError: no such order"}
        assert results["c5"]["result"] == {"ok": True}
        assert results["c6"]["result"] == {"error": "no tool 'missing' in this agent process"}
        assert results["c7"]["result"]["error"].startswith("TypeError: ")
        assert results["c8"]["result"] == {"error": "the arguments must be a JSON object"}
        assert results["c9"]["result"]["error"].startswith("the tool result is too large")


# -------------------------------------------------------------------- turns


async def test_turns_are_answered_with_reply_frames() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        byo = gw.agent("byo")
        turns: list[Turn] = []

        @byo.on_turn
        async def answer(turn: Turn, reply: ReplyWriter) -> str | None:
            turns.append(turn)
            if turn.text == "stream":
                async with reply:
                    for token in ("Hel", "", "lo"):
                        await reply.write(token)
                return None
            if turn.text == "fail":
                async with reply:
                    await reply.write("par")
                    raise RuntimeError("model down")
            if turn.text == "crash":
                raise KeyError("x")
            return f"you said {turn.text}"

        async def turn(conn: FakeConn, mid: str, text: str) -> list[dict[str, Any]]:
            await conn.send(
                {
                    "event": "turn",
                    "agent_id": "byo",
                    "session_id": "chat-1",
                    "message_id": mid,
                    "in_reply_to": f"u-{mid}",
                    "text": text,
                    "history": [{"role": "user", "text": "earlier", "source": "user"}],
                    "channel": "chat",
                    "contact": {"id": "u1", "name": "Ada"},
                    "context": {"page": "cart"},
                    "metadata": {"plan": "pro"},
                }
            )
            frames = []
            while not frames or frames[-1]["event"] not in ("reply.end", "reply.error"):
                frames.append(await conn.next())
            return frames

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.next("agent.register")
            streamed = await turn(conn, "m1", "stream")
            whole = await turn(conn, "m2", "hi")
            failed = await turn(conn, "m3", "fail")
            crashed = await turn(conn, "m4", "crash")
        base = {"session_id": "chat-1"}
        assert streamed == [
            {"event": "reply.start", **base, "message_id": "m1", "in_reply_to": "u-m1"},
            {"event": "reply.chunk", **base, "message_id": "m1", "token": "Hel"},
            {"event": "reply.chunk", **base, "message_id": "m1", "token": "lo"},
            {"event": "reply.end", **base, "message_id": "m1"},
        ]
        assert whole == [
            {"event": "reply.start", **base, "message_id": "m2", "in_reply_to": "u-m2"},
            {"event": "reply.end", **base, "message_id": "m2", "text": "you said hi"},
        ]
        assert [f["event"] for f in failed] == ["reply.start", "reply.chunk", "reply.error"]
        assert failed[-1]["message"] == "RuntimeError: model down"
        assert crashed == [{"event": "reply.error", **base, "message_id": "m4", "message": "KeyError: 'x'"}]
        t = turns[0]
        assert (t.agent_id, t.session_id, t.message_id, t.channel) == ("byo", "chat-1", "m1", "chat")
        assert t.contact == {"id": "u1", "name": "Ada"} and t.context == {"page": "cart"}
        assert t.metadata == {"plan": "pro"} and t.session == Session(gw, "byo", "chat-1")
        assert t.chat_messages("sys") == [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "earlier"},
            {"role": "user", "content": "stream"},
        ]


async def test_sync_turn_handler_and_agent_without_handler() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        sync_agent = gw.agent("sync")
        gw.agent("mute")

        @sync_agent.on_turn
        def answer(turn: Turn) -> str:
            return turn.text.upper()

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            for agent_id in ("sync", "mute"):
                await conn.send(
                    {
                        "event": "turn",
                        "agent_id": agent_id,
                        "session_id": "s",
                        "message_id": agent_id,
                        "text": "hey",
                    }
                )
            frames: list[dict[str, Any]] = []
            while {"reply.end", "reply.error"} - {f["event"] for f in frames}:
                frames.append(await conn.next())
        end = next(f for f in frames if f["event"] == "reply.end")
        error = next(f for f in frames if f["event"] == "reply.error")
        assert end["text"] == "HEY" and end["message_id"] == "sync"
        assert error["message_id"] == "mute" and "no turn handler" in error["message"]


async def test_turn_cancelled_and_connection_loss_stop_the_handler() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        byo = gw.agent("byo")
        started: list[str] = []
        cancelled: list[str] = []

        @byo.on_turn
        async def answer(turn: Turn, reply: ReplyWriter) -> None:
            started.append(turn.message_id)
            try:
                async with reply:
                    await reply.write("thinking")
                    await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(turn.message_id)
                raise

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.send(
                {"event": "turn", "agent_id": "byo", "session_id": "s", "message_id": "m1", "text": "a"}
            )
            await conn.next("reply.chunk")
            await conn.send({"event": "turn.cancelled", "session_id": "s", "message_id": "m1"})
            await until(lambda: cancelled == ["m1"])
            await conn.send(
                {"event": "turn", "agent_id": "byo", "session_id": "s", "message_id": "m2", "text": "b"}
            )
            await conn.next("reply.chunk")
            await conn.drop()
            await until(lambda: cancelled == ["m1", "m2"])
            conn2 = await fake.connections.get()
            await gw.wait_ready(5)
            await asyncio.sleep(0.1)
            assert conn.frames.empty() and conn2.frames.qsize() == 1  # only the new agent.register
        assert started == ["m1", "m2"]


# ------------------------------------------------------------------ commands


async def test_session_commands_await_their_answers() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, reconnect_initial=0.05, reconnect_max=0.2, request_timeout=0.5)
        support = gw.agent("support")
        session = support.session("chat-9")

        async def answer_commands(conn: FakeConn) -> list[dict[str, Any]]:
            got = []
            while True:
                frame = await conn.next()
                if frame["event"] in ("agent.register", "ping"):
                    continue
                got.append(frame)
                rid = frame["request_id"]
                if frame["event"] == "session.get_history":
                    messages = [{"message_id": "m1", "role": "user", "source": "user", "text": "hi"}]
                    await conn.send(
                        {
                            "event": "session.history",
                            "session_id": "chat-9",
                            "messages": messages,
                            "request_id": rid,
                        }
                    )
                elif frame["event"] == "session.end":
                    await conn.send(
                        {"event": "error", "code": "unknown_session", "message": "no", "request_id": rid}
                    )
                elif frame["event"] == "session.clear_history":
                    return got  # never answered
                else:
                    await conn.send({"event": "ok", "request_id": rid})

        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            answering = asyncio.create_task(answer_commands(conn))
            await session.set_prompt("You are {{who}}")
            await session.add_context("VIP")
            await session.set_prompt_vars({"who": "Nova"}, city=None)
            await session.set_history([{"role": "user", "content": "a"}, {"role": "assistant", "text": "b"}])
            assert await session.get_history() == [
                {"message_id": "m1", "role": "user", "source": "user", "text": "hi"}
            ]
            with pytest.raises(CommandError) as info:
                await session.end("erased")
            assert info.value.code == "unknown_session"
            with pytest.raises(RequestTimeout):
                await session.clear_history()
            sent = await answering
        assert [(f["event"], f["session_id"]) for f in sent] == [
            ("session.set_prompt", "chat-9"),
            ("session.add_context", "chat-9"),
            ("session.set_prompt_vars", "chat-9"),
            ("session.set_history", "chat-9"),
            ("session.get_history", "chat-9"),
            ("session.end", "chat-9"),
            ("session.clear_history", "chat-9"),
        ]
        assert sent[0]["prompt"] == "You are {{who}}" and sent[1]["text"] == "VIP"
        assert sent[2]["vars"] == {"who": "Nova", "city": None}
        assert sent[3]["messages"] == [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]
        assert sent[5]["reason"] == "erased"
        assert len({f["request_id"] for f in sent}) == len(sent)


async def test_commands_from_handlers_and_without_a_connection() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, reconnect_initial=0.05, reconnect_max=0.2, request_timeout=0.3)
        support = gw.agent("support")

        @support.on("session.started")
        async def greet(event: dict[str, Any], session: Session) -> None:
            await session.set_prompt_vars(name=event["contact"]["name"])

        from gateway.client import NotConnected

        with pytest.raises(NotConnected):
            await support.session("s").set_prompt("x")  # not running at all
        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.send(fake.event("session.started", "support", sessionId="s1", contact={"name": "Ada"}))
            frame = await conn.next("session.set_prompt_vars")
            assert frame["vars"] == {"name": "Ada"} and frame["session_id"] == "s1"
            await conn.send({"event": "ok", "request_id": frame["request_id"]})
            fake.reject_next = 1000
            await conn.drop()
            await until(lambda: not gw.connected)
            with pytest.raises(NotConnected):
                await support.session("s1").add_context("while away")


# ------------------------------------------------------------ reconnecting


async def test_reconnects_with_last_seq_and_skips_replayed_duplicates() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        support = gw.agent("support")
        texts: list[str] = []
        caught: list[int] = []

        @support.on("user.message")
        async def on_message(event: dict[str, Any]) -> None:
            texts.append(event["text"])

        @support.on("stream.caughtUp")
        async def on_caught_up(event: dict[str, Any]) -> None:
            caught.append(event["seq"])

        fake.event("user.message", "support", sessionId="s", text="before the process existed")
        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            for text in ("one", "two"):
                await conn.send(fake.event("user.message", "support", sessionId="s", text=text))
            await until(lambda: len(texts) == 2)
            await conn.drop()
            # Missed while disconnected (the fake "persists" them; the replay sends them).
            fake.event("user.message", "support", sessionId="s", text="three")
            fake.event("user.message", "other", sessionId="o", text="not mine")
            fake.event("user.message", "support", sessionId="s", text="four")
            conn2 = await fake.connections.get()
            register = await conn2.next("agent.register")
            await gw.wait_ready(5)
            await conn2.send(fake.events[2])  # a duplicate of "two" (seq 3): dropped
            await conn2.send(fake.event("user.message", "support", sessionId="s", text="five"))
            await until(lambda: len(texts) == 5)
            await asyncio.sleep(0.05)
        assert register["last_seq"] == 3
        assert texts == ["one", "two", "three", "four", "five"]
        assert caught == [6]
        assert support.last_seq == 7 and gw.connections == 2


async def test_backoff_grows_with_jitter_is_capped_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    ceilings = [min(30.0, 0.5 * 2**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(0, 1)

    async with fake_gateway() as fake:
        fake.reject_next = 4
        gw = Gateway(fake.url, api_key=KEY, reconnect_initial=0.1, reconnect_max=0.3, request_timeout=2)
        gw.agent("a")
        async with running(gw):
            await gw.wait_ready(10)
        gaps = [b - a for a, b in zip(fake.attempts, fake.attempts[1:], strict=False)]
        assert len(gaps) == 4
        for gap, ceiling in zip(gaps, (0.1, 0.2, 0.3, 0.3), strict=True):
            assert ceiling / 2 - 0.02 <= gap <= ceiling + 0.25, gaps


async def test_reconnects_when_the_gateway_is_down_then_back() -> None:
    fake = FakeGateway()
    server = await serve(fake.handler, "127.0.0.1", 0)
    fake.server = server
    port = next(iter(server.sockets)).getsockname()[1]
    gw = Gateway(f"ws://127.0.0.1:{port}", api_key=KEY, **FAST)
    gw.agent("a")
    async with running(gw):
        await gw.wait_ready(5)
        server.close()
        await server.wait_closed()
        await until(lambda: not gw.connected)
        await asyncio.sleep(0.3)  # a few refused attempts
        async with serve(fake.handler, "127.0.0.1", port) as again:
            fake.server = again
            await gw.wait_ready(5)
            assert gw.connections == 2


# ---------------------------------------------------------------- heartbeat


async def test_heartbeat_pings_answers_pings_and_drops_a_silent_gateway() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, ping_interval=0.05, silence_timeout=0.4, **FAST)
        gw.agent("a")
        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.next("ping", timeout=2)
            await conn.send({"event": "ping"})
            assert (await conn.next("pong", timeout=2)) == {"event": "pong"}
            # Answered pings keep it alive well past silence_timeout.
            await asyncio.sleep(0.6)
            assert not conn.closed.is_set() and gw.connections == 1
            # A gateway that stops answering is dropped, and the client reconnects.
            fake.auto_pong = False
            async with asyncio.timeout(3):
                await conn.closed.wait()
            fake.auto_pong = True
            await fake.connections.get()
            await gw.wait_ready(5)
            assert gw.connections == 2


async def test_hot_update_reregisters() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        support = gw.agent("support", prompt="v1")
        async with running(gw):
            conn = await fake.connections.get()
            await gw.wait_ready(5)
            await conn.next("agent.register")

            @support.tool
            def late(x: int) -> int:
                return x

            await support.update(prompt="v2", greeting="Hi")
            frame = await conn.next("agent.register")
        assert frame["config"]["prompt"] == "v2" and frame["config"]["greeting"] == "Hi"
        assert [t["name"] for t in frame["config"]["tools"]] == ["late"]
        assert frame["last_seq"] == 0


async def test_async_context_manager() -> None:
    async with fake_gateway() as fake:
        gw = Gateway(fake.url, api_key=KEY, **FAST)
        gw.agent("a")
        async with gw:
            assert gw.connected
        assert not gw.connected
        with pytest.raises(ValueError, match="declare at least one agent"):
            await Gateway(fake.url, api_key=KEY).run()
        # close() right after start(), while the handshake is under way, still stops run().
        for ticks in range(6):
            early = Gateway(fake.url, api_key=KEY, **FAST)
            early.agent("a")
            task = early.start()
            for _ in range(ticks):
                await asyncio.sleep(0)
            async with asyncio.timeout(5):
                await early.close()
            assert task.done() and not early.connected
