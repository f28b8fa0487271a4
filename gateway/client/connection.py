"""`Gateway`: the connection of an agent process to `WS /v1/agents/ws`.

`run()` connects, registers every agent (with `last_seq` after a reconnect, so the
gateway replays what was missed), then reads frames until the socket drops, and
reconnects with exponential backoff and jitter, forever, until `close()`. Frames are
dispatched as they come: events to the agents' handlers (one at a time, in order),
turns and tool calls to their own tasks (concurrently), answers to the commands
waiting for them (by `request_id`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import enum
import itertools
import json
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from gateway.client.agent import Agent, Tool, call_handler
from gateway.client.errors import (
    AuthenticationError,
    ClientError,
    CommandError,
    ConnectionLost,
    NotConnected,
    RegistrationError,
    RequestTimeout,
)
from gateway.client.session import Frame, ReplyWriter, Session, Turn, error_text

log = logging.getLogger("gateway.client")

AGENTS_PATH = "/v1/agents/ws"
ANSWERS = frozenset({"ok", "error", "agent.registered", "session.history"})
_FATAL_REGISTRATION = frozenset({"invalid_config", "invalid_agent_id", "forbidden", "unauthorized"})
_SESSION_MAP_SIZE = 10_000
MAX_SEND_BYTES = 1_048_576  # the gateway answers a larger frame with `error frame_too_large`


def websocket_url(url: str) -> str:
    """`http(s)://host[:port][/prefix]` or `ws(s)://…` → `ws(s)://host[:port][/prefix]/v1/agents/ws`."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"a gateway URL like http://127.0.0.1:8080 or wss://gw.example.com (got {url!r})")
    path = parts.path.rstrip("/")
    if not path.endswith(AGENTS_PATH):
        path += AGENTS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Backoff:
    """Exponential backoff with jitter: the n-th delay is uniform in [d/2, d], d = min(cap, initial·2ⁿ)."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _json_default(value: Any) -> Any:
    """JSON for what tools commonly return: dataclasses, pydantic models, enums, dates, sets."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, default=_json_default, separators=(",", ":"))


class _Socket:
    """One live connection: its pending commands and the turn/tool tasks it started."""

    def __init__(self, ws: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.pending: dict[str, asyncio.Future[Frame]] = {}
        self.turns: dict[str, asyncio.Task[None]] = {}
        self.tools: set[asyncio.Task[None]] = set()
        self.last_rx = loop.time()
        self.closed = False
        self.close_error: ClientError = ConnectionLost("the connection to the gateway was lost")

    async def send(self, frame: Mapping[str, Any]) -> None:
        if self.closed:
            raise ConnectionLost("the connection to the gateway was lost")
        try:
            await self.ws.send(encode(frame))
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the connection to the gateway was lost ({exc})") from None

    def expect(self, request_id: str) -> asyncio.Future[Frame]:
        future: asyncio.Future[Frame] = self.loop.create_future()
        self.pending[request_id] = future
        return future

    def resolve(self, frame: Frame) -> bool:
        request_id = frame.get("request_id")
        future = self.pending.pop(request_id, None) if isinstance(request_id, str) else None
        if future is None or future.done():
            return False
        future.set_result(frame)
        return True

    def fail(self) -> None:
        """The socket is gone: fail the commands waiting on it, stop the turns it carried."""
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(self.close_error)
                future.exception()  # retrieved here, so a future nobody awaits logs nothing
        self.pending.clear()
        for task in self.turns.values():
            task.cancel()
        self.turns.clear()


class Gateway:
    """A connection from this process to a gateway, serving the agents it declares.

    gw = Gateway("http://127.0.0.1:8080", api_key="sk_...")
    support = gw.agent("support", prompt="You are Nova.", llm={"base_url": ..., "model": ...})

    @support.tool
    async def lookup_order(order_id: str) -> dict: ...

    await gw.run()     # until gw.close()
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        request_timeout: float = 10.0,
        ping_interval: float = 20.0,
        silence_timeout: float = 60.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        open_timeout: float = 10.0,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required (e.g. GATEWAY_API_KEY or GATEWAY_ADMIN_KEY)")
        self.url = websocket_url(url)
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.open_timeout = open_timeout
        self.max_frame_bytes = max_frame_bytes
        self.backoff = Backoff(reconnect_initial, reconnect_max)
        self.agents: dict[str, Agent] = {}
        self.connections = 0  # how many times a connection came up and registered
        self._socket: _Socket | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._closing = False
        self._events: asyncio.Queue[tuple[Agent, Frame]] | None = None
        self._session_agents: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    def __repr__(self) -> str:
        return f"Gateway({self.url!r}, agents={list(self.agents)})"

    # ------------------------------------------------------------- declaring

    def agent(
        self,
        agent_id: str,
        *,
        tools: Iterable[Tool | Callable[..., Any] | Mapping[str, Any]] = (),
        last_seq: int | None = None,
        **config: Any,
    ) -> Agent:
        """Declare an agent; `config` takes the keys of `[agents.<id>]` (prompt, llm, greeting, …).

        `tools` are functions (or `tool(...)`s) run here, or config dicts (e.g. with a `url`).
        `last_seq` replays the events after that seq at the first registration too (say, one
        saved before a restart).
        """
        if agent_id in self.agents:
            raise ValueError(f"agent {agent_id!r} is already declared")
        if not agent_id or not all(c.isalnum() or c in "-_" for c in agent_id) or len(agent_id) > 64:
            raise ValueError(f"agent ids are 1-64 letters, digits, '-' and '_' (got {agent_id!r})")
        made = Agent(self, agent_id, config, tools=tools, last_seq=last_seq)
        self.agents[agent_id] = made
        return made

    def session(self, agent_id: str, session_id: str) -> Session:
        return Session(self, agent_id, session_id)

    # --------------------------------------------------------------- running

    @property
    def connected(self) -> bool:
        """True while a connection is up and every agent is registered on it."""
        return self._ready is not None and self._ready.is_set()

    def start(self) -> asyncio.Task[None]:
        """Run in the background (`run()` as a task); see `wait_ready()` and `close()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="gateway-client")
        return self._task

    async def wait_ready(self, within: float | None = None) -> None:
        """Wait (up to `within` seconds) until connected and registered.

        Raises what stopped `run()`, if it stopped (e.g. `AuthenticationError`).
        """
        async with asyncio.timeout(within):
            while not self.connected:
                task = self._task
                if task is not None and task.done():
                    task.result()
                    raise ClientError("the gateway client stopped")
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Gateway:
        self.start()
        try:
            await self.wait_ready(self.open_timeout + self.request_timeout * (1 + len(self.agents)))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: close the connection, cancel what runs, and make `run()` return."""
        task = self._task
        if not self._running and (task is None or task.done()):
            return
        self._closing = True  # consumed by run(), which resets it when it returns
        if self._stop is not None:
            self._stop.set()
        socket = self._socket
        if socket is not None:
            with contextlib.suppress(Exception):
                await socket.ws.close()
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: close() is not where run()'s errors surface

    async def run(self) -> None:
        """Connect, register, dispatch; reconnect forever (with backoff) until `close()`.

        Raises `AuthenticationError` (wrong API key) and `RegistrationError` (a config
        the gateway refuses): retrying would not help.
        """
        if self._running:
            raise RuntimeError("this Gateway is already running")
        if not self.agents:
            raise ValueError("declare at least one agent (gw.agent(...)) before running")
        for agent in self.agents.values():
            if agent.turn_handler is None and "llm" not in agent.config and "answer" not in agent.config:
                log.warning("agent %s has no llm and no @on_turn handler: its turns will fail", agent.id)
        self._running = True
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._events = asyncio.Queue()
        dispatcher = asyncio.create_task(self._dispatch_events(self._events), name="gateway-client-events")
        try:
            while not self._closing:
                try:
                    async with connect(
                        self.url,
                        additional_headers={"Authorization": f"Bearer {self.api_key}"},
                        open_timeout=self.open_timeout,
                        max_size=self.max_frame_bytes,
                        ping_interval=self.ping_interval,
                        ping_timeout=self.silence_timeout,
                        close_timeout=2,
                    ) as ws:
                        await self._serve(ws)
                except (AuthenticationError, RegistrationError):
                    raise
                except InvalidURI:
                    raise
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, ClientError) as exc:
                    if self._closing:
                        break
                    log.warning("gateway connection failed: %s", exc or type(exc).__name__)
                if self._closing:
                    break
                delay = self.backoff.next()
                log.info("reconnecting to %s in %.2f s", self.url, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        finally:
            self._running = False
            self._closing = False
            self._ready.clear()
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher

    async def _serve(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        socket = _Socket(ws, loop)
        self._socket = socket
        if self._closing:  # close() came during the handshake: it could not see this socket
            self._socket = None
            return
        reader = asyncio.create_task(self._read(socket), name="gateway-client-reader")
        heartbeat: asyncio.Task[None] | None = None
        error: ClientError | None = None
        try:
            for agent in list(self.agents.values()):
                await self._register(socket, agent)
            assert self._ready is not None
            self._ready.set()
            self.connections += 1
            self.backoff.reset()
            log.info("connected to %s; agents %s registered", self.url, ", ".join(self.agents))
            heartbeat = asyncio.create_task(self._heartbeat(socket), name="gateway-client-heartbeat")
            await asyncio.wait({reader, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
        except ClientError as exc:
            error = exc
        finally:
            if self._ready is not None:
                self._ready.clear()
            self._socket = None
            socket.fail()
            for task in (reader, heartbeat):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            with contextlib.suppress(Exception):
                await ws.close()
            if self._closing:
                for task in list(socket.tools):
                    task.cancel()
        if ws.close_code == 4401:
            raise AuthenticationError(f"the gateway refused the API key ({_close_info(ws)})")
        if error is not None:
            raise error
        raise ConnectionLost(f"the gateway closed the connection ({_close_info(ws)})")

    async def _register(self, socket: _Socket, agent: Agent) -> None:
        frame: Frame = {"event": "agent.register", "agent_id": agent.id, "config": agent.registration()}
        if agent.last_seq is not None:
            frame["last_seq"] = agent.last_seq
        answer = await self._ask(socket, frame, self.request_timeout)
        if answer.get("event") == "error":
            code, message = str(answer.get("code", "error")), str(answer.get("message", ""))
            if code in _FATAL_REGISTRATION:
                raise RegistrationError(agent.id, code, message)
            raise ConnectionLost(f"agent.register {agent.id} failed: {code}: {message}")
        seq = answer.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            agent.advance(seq)

    async def reregister(self, agent: Agent) -> None:
        """Send the agent's (updated) config now, if connected; else at the next connection."""
        socket = self._socket
        if socket is None or not self.connected:
            return
        await self._register(socket, agent)

    # -------------------------------------------------------------- commands

    def _next_request_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def _ask(self, socket: _Socket, frame: Frame, seconds: float) -> Frame:
        request_id = self._next_request_id()
        future = socket.expect(request_id)
        try:
            await socket.send({**frame, "request_id": request_id})
            async with asyncio.timeout(seconds):
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no answer to {frame.get('event')} within {seconds:g} s") from None
        finally:
            socket.pending.pop(request_id, None)

    async def request(self, frame: Frame, *, within: float | None = None) -> Frame:
        """Send a command with a fresh `request_id` and return the gateway's answer.

        Waits for a connection first; the whole exchange is bounded by `within` seconds
        (`request_timeout` by default). An `error` answer raises `CommandError`.
        """
        timeout = self.request_timeout if within is None else within
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        socket = self._socket if self.connected else None
        if socket is None:
            if self._ready is None:
                raise NotConnected("the gateway client is not running (call gw.run() or gw.start())")
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise NotConnected(f"not connected to the gateway within {timeout:g} s") from None
            socket = self._socket
            if socket is None:
                raise NotConnected("the connection to the gateway dropped")
        answer = await self._ask(socket, frame, max(0.0, deadline - loop.time()))
        if answer.get("event") == "error":
            raise CommandError(str(answer.get("code", "error")), str(answer.get("message", "")))
        return answer

    # --------------------------------------------------------------- reading

    async def _read(self, socket: _Socket) -> None:
        ws = socket.ws
        try:
            async for raw in ws:
                socket.last_rx = socket.loop.time()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON: %.80r", raw)
                    continue
                if not isinstance(frame, dict):
                    log.warning("ignoring a frame that is not an object: %.80r", raw)
                    continue
                try:
                    await self._on_frame(socket, frame)
                except ConnectionLost:
                    return
                except Exception:
                    log.exception("error handling a %s frame", frame.get("event"))
        except ConnectionClosed:
            pass
        finally:
            if ws.close_code == 4401:
                socket.close_error = AuthenticationError(
                    f"the gateway refused the API key ({_close_info(ws)})"
                )
            socket.fail()

    async def _on_frame(self, socket: _Socket, frame: Frame) -> None:
        kind = frame.get("event")
        if kind == "ping":
            await socket.send({"event": "pong"})
            return
        if kind == "pong":
            return
        if kind in ANSWERS and socket.resolve(frame):
            return
        if kind == "error":
            log.warning("gateway error: %s: %s", frame.get("code"), frame.get("message"))
        elif kind == "turn":
            self._start_turn(socket, frame)
        elif kind == "tool.call":
            task = asyncio.create_task(self._run_tool(socket, frame), name="gateway-client-tool")
            socket.tools.add(task)
            task.add_done_callback(socket.tools.discard)
        elif kind == "turn.cancelled":
            turn_task = socket.turns.pop(str(frame.get("message_id")), None)
            if turn_task is not None:
                turn_task.cancel()
        elif kind == "stream.caughtUp":
            agent = self.agents.get(str(frame.get("agent_id", frame.get("agent", ""))))
            if agent is not None:
                self._queue_event(agent, frame)
        elif isinstance(kind, str) and isinstance(frame.get("agent"), str):
            self._on_event(frame)
        else:
            log.debug("ignoring frame %.200r", frame)

    def _on_event(self, frame: Frame) -> None:
        agent = self.agents.get(frame["agent"])
        if agent is None:
            return
        session_id = frame.get("sessionId")
        if isinstance(session_id, str):
            self._remember_session(session_id, agent.id)
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and not agent.saw(seq):
            return  # a replayed event already handled
        self._queue_event(agent, frame)

    def _queue_event(self, agent: Agent, frame: Frame) -> None:
        if agent.handlers_for(str(frame.get("event"))) and self._events is not None:
            self._events.put_nowait((agent, frame))

    async def _dispatch_events(self, queue: asyncio.Queue[tuple[Agent, Frame]]) -> None:
        while True:
            agent, frame = await queue.get()
            kind = str(frame.get("event"))
            session_id = frame.get("sessionId")
            session = Session(self, agent.id, session_id) if isinstance(session_id, str) else None
            for handler in agent.handlers_for(kind):
                try:
                    await call_handler(handler, frame, session)
                except Exception:
                    log.exception("the %s handler %s of agent %s failed", kind, _name(handler), agent.id)

    def _remember_session(self, session_id: str, agent_id: str) -> None:
        self._session_agents[session_id] = agent_id
        self._session_agents.move_to_end(session_id)
        while len(self._session_agents) > _SESSION_MAP_SIZE:
            self._session_agents.popitem(last=False)

    def _agent_of(self, frame: Frame, *, tool: str | None = None) -> Agent | None:
        named = frame.get("agent_id")
        if isinstance(named, str) and named in self.agents:
            return self.agents[named]
        known = self._session_agents.get(str(frame.get("session_id")))
        if known in self.agents:
            return self.agents[known]
        if tool is not None:
            having = [a for a in self.agents.values() if tool in a.tools]
            return having[0] if len(having) == 1 else None
        answering = [a for a in self.agents.values() if a.turn_handler is not None]
        return answering[0] if len(answering) == 1 else None

    # ----------------------------------------------------------------- turns

    def _start_turn(self, socket: _Socket, frame: Frame) -> None:
        message_id = frame.get("message_id")
        session_id = frame.get("session_id")
        if not isinstance(message_id, str) or not isinstance(session_id, str):
            log.warning("ignoring a turn without session_id/message_id: %.200r", frame)
            return
        task = asyncio.create_task(
            self._answer(socket, frame, session_id, message_id), name="gateway-client-turn"
        )
        socket.turns[message_id] = task
        task.add_done_callback(lambda _t: socket.turns.pop(message_id, None))

    async def _answer(self, socket: _Socket, frame: Frame, session_id: str, message_id: str) -> None:
        reply = ReplyWriter(socket.send, session_id, message_id, _opt_str(frame.get("in_reply_to")))
        agent = self._agent_of(frame)
        try:
            if agent is None or agent.turn_handler is None:
                who = agent.id if agent is not None else frame.get("agent_id", "?")
                await reply.error(f"agent {who} has no turn handler in this process")
                return
            self._remember_session(session_id, agent.id)
            turn = Turn(
                agent_id=agent.id,
                session_id=session_id,
                message_id=message_id,
                text=str(frame.get("text") or ""),
                session=Session(self, agent.id, session_id),
                history=[dict(m) for m in frame.get("history") or [] if isinstance(m, dict)],
                channel=_opt_str(frame.get("channel")),
                contact=frame.get("contact") if isinstance(frame.get("contact"), dict) else None,
                context=dict(frame.get("context") or {}),
                metadata=dict(frame.get("metadata") or {}),
                in_reply_to=_opt_str(frame.get("in_reply_to")),
                raw=frame,
            )
            try:
                result = await call_handler(agent.turn_handler, turn, reply)
            except ConnectionLost:
                return
            except Exception as exc:
                log.exception("the turn handler of agent %s failed", agent.id)
                if not reply.finished:
                    await reply.error(error_text(exc))
                return
            if not reply.finished:
                await reply.end(result if isinstance(result, str) else None)
        except ConnectionLost:
            log.info("the connection dropped before the reply to %s was sent", message_id)

    # ----------------------------------------------------------------- tools

    async def _run_tool(self, socket: _Socket, frame: Frame) -> None:
        name = str(frame.get("name", ""))
        call_id = frame.get("tool_call_id")
        session_id = str(frame.get("session_id", ""))
        agent = self._agent_of(frame, tool=name)
        found = agent.tools.get(name) if agent is not None else None
        arguments = frame.get("arguments")
        result: Any
        if found is None or agent is None:
            result = {"error": f"no tool {name!r} in this agent process"}
        elif not isinstance(arguments, dict):
            result = {"error": "the arguments must be a JSON object"}
        else:
            try:
                result = await found.invoke(arguments, Session(self, agent.id, session_id))
            except Exception as exc:
                log.warning("tool %s raised %s", name, error_text(exc))
                result = {"error": error_text(exc)}
            if result is None:
                result = {"ok": True}
        out = {"event": "tool.result", "session_id": session_id, "tool_call_id": call_id, "result": result}
        try:
            size = len(encode(out).encode())
        except (TypeError, ValueError) as exc:  # e.g. a circular structure
            out["result"] = {"error": f"the tool result is not JSON: {exc}"}
        else:
            if size > MAX_SEND_BYTES:
                log.warning(
                    "tool %s returned %d bytes; the gateway reads at most %d", name, size, MAX_SEND_BYTES
                )
                out["result"] = {"error": f"the tool result is too large ({size} bytes)"}
        try:
            await socket.send(out)
        except ConnectionLost:
            log.info("the result of tool call %s was lost with the connection", call_id)

    # ------------------------------------------------------------- heartbeat

    async def _heartbeat(self, socket: _Socket) -> None:
        """Ping every `ping_interval`; close a connection silent for `silence_timeout`."""
        while True:
            await asyncio.sleep(self.ping_interval)
            silent = socket.loop.time() - socket.last_rx
            if silent > self.silence_timeout:
                log.warning("the gateway sent nothing for %.0f s; reconnecting", silent)
                with contextlib.suppress(Exception):
                    await socket.ws.close(4408, "gateway silent")
                return
            try:
                await socket.send({"event": "ping"})
            except ConnectionLost:
                return


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or fn)


def _close_info(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "no close frame"
    return f"code {ws.close_code}" + (f": {ws.close_reason}" if ws.close_reason else "")
