"""`WS /v1/agents/ws`: agent processes (PROTOCOL §7, docs/agents.md "Agent processes").

One task group per connection: a reader (frames from the process), a writer (the
registered agents' events from the bus), a heartbeat, and the shutdown watcher;
the first to finish cancels the others. Every malformed or refused frame is
answered with `error {code, message}` and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway import ids, sanitizer
from gateway.access import Access
from gateway.agents.remote import ProcessHub, ProcessLink, ReplyItem
from gateway.auth import Principal
from gateway.bus.base import SubscriptionClosed
from gateway.bus.fanout import Fanout, Inbox, Interest
from gateway.calls import CallControl
from gateway.codec import dumps
from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.errors import GatewayError
from gateway.events import Event
from gateway.metrics import Metrics
from gateway.registration import Registrations
from gateway.settings import AgentConfig, Settings, describe_validation
from gateway.store.sql import NewMessage, Store
from gateway.tasks import first_completed
from gateway.types import EventType

log = logging.getLogger("gateway.agent_socket")

HEARTBEAT_SECONDS = 20.0
SILENCE_SECONDS = 60.0
MAX_FRAME_BYTES = 1_048_576
_SLUG = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _str(frame: dict[str, Any], key: str, *, max_len: int = 256, required: bool = True) -> str:
    value = frame.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FrameError(
            "invalid_frame", f"`{key}` must be a non-empty string of at most {max_len} characters"
        )
    return value


def decode_frame(raw: str | bytes, *, max_bytes: int) -> tuple[dict[str, Any], str | None]:
    """A frame as a JSON object plus its `request_id`, or a FrameError saying why not."""
    if len(raw) > max_bytes:
        raise FrameError("frame_too_large", f"frames are limited to {max_bytes} bytes")
    try:
        frame = sanitizer.parse_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FrameError("invalid_json", "frames must be JSON objects") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "frames must be JSON objects")
    if sanitizer.may_need_cleaning(raw) and (found := sanitizer.find_problem(frame, "")) is not None:
        where, what = found  # nothing unsafe reaches the store (sanitizer.py says why)
        raise FrameError("invalid_frame", f"`{sanitizer.clip(where, 200)}` {what}")
    request_id = frame.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 64):
        raise FrameError("invalid_frame", "`request_id` must be a string of at most 64 characters")
    return frame, request_id


class AgentSocket:
    def __init__(
        self,
        hub: ProcessHub,
        fanout: Fanout,
        *,
        access: Access,
        calls: CallControl | None,
        directory: AgentDirectory,
        metrics: Metrics,
        service: ConversationService,
        settings: Settings,
        stopping: asyncio.Event,
        store: Store,
    ) -> None:
        self.access = access
        self.calls = calls
        self.directory = directory
        self.metrics = metrics
        self.service = service
        self.settings = settings
        self.stopping = stopping
        self.store = store
        self.hub = hub
        self.fanout = fanout

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/v1/agents/ws", self.endpoint)]

    async def endpoint(self, ws: WebSocket) -> None:
        gauge = self.metrics.websockets.labels("agent")
        gauge.inc()
        try:
            await ws.accept()
            try:
                principal = await self.access.key(ws)
            except GatewayError as exc:
                await ws.close(4000 + exc.status, exc.message[:120])
                return
            if principal.read_only:
                await ws.close(4403, "read-only keys cannot serve agents")
                return
            await AgentConnection(ws, self, self.hub, self.fanout, principal).run()
        except WebSocketDisconnect:
            pass
        finally:
            gauge.dec()


class AgentConnection:
    def __init__(
        self, ws: WebSocket, socket: AgentSocket, hub: ProcessHub, fanout: Fanout, principal: Principal
    ) -> None:
        self.ws = ws
        self.socket = socket
        self.hub = hub
        self.fanout = fanout
        self._inbox: Inbox | None = None
        self.principal = principal
        self._send_lock = asyncio.Lock()
        self.link = ProcessLink(self.send, principal.name)
        self.registrations = Registrations(socket.settings.server, socket.directory, socket.access)
        # agent id → None while its replay runs (live events are buffered), else its high-water seq
        self.agents: dict[str, int | None] = {}
        self._buffered: dict[str, list[tuple[int, bytes]]] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        text = dumps(frame)
        try:
            text.encode()
        except UnicodeEncodeError:  # only data stored before gateway/sanitizer.py existed
            text = dumps(sanitizer.clean_json(frame))
        await self.send_text(text)

    async def send_text(self, text: str) -> None:
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                raise ConnectionError("agent socket closed")
            await self.ws.send_text(text)

    async def run(self) -> None:
        try:
            # Pushed only the events of the agents this process registers (`follow`).
            async with self.fanout.open(Interest(agents=frozenset()), 20_000) as inbox:
                self._inbox = inbox
                await first_completed(
                    self._reader(), self._writer(inbox), self._heartbeat(), self._stopping()
                )
        finally:
            self.link.close()
            gone = self.hub.detach(self.link)
            if gone:
                await self.socket.service.record_events(
                    [
                        Event(type=EventType.AGENT_DISCONNECTED, agent=a, data={"process": self.link.name})
                        for a in gone
                    ]
                )
            if self.ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.ws.close(1000)

    async def _stopping(self) -> None:
        await self.socket.stopping.wait()
        with contextlib.suppress(Exception):
            await self.ws.close(1001, "server shutting down")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.send({"event": "ping"})

    # ----------------------------------------------------------------- reader

    async def _reader(self) -> None:
        while True:
            try:
                async with asyncio.timeout(SILENCE_SECONDS):
                    msg = await self.ws.receive()
            except TimeoutError:
                await self.ws.close(4408, "no frame for 60 s")
                return
            if msg["type"] == "websocket.disconnect":
                return
            raw = msg.get("text")
            if raw is None:
                raw = msg.get("bytes") or b""
            request_id: Any = None
            try:
                frame, request_id = decode_frame(raw, max_bytes=MAX_FRAME_BYTES)
                await self._handle(frame, request_id)
            except FrameError as exc:
                await self._error(exc.code, exc.message, request_id)
            except GatewayError as exc:
                await self._error(exc.code, exc.message, request_id)
            except (WebSocketDisconnect, ConnectionError, OSError):
                raise
            except Exception:
                # A bug must not drop the process's connection: say so, log it, read on.
                log.exception("agent frame failed")
                await self._error("internal", "internal error (a bug: it has been logged)", request_id)

    async def _error(self, code: str, message: str, request_id: Any) -> None:
        out: dict[str, Any] = {"event": "error", "code": code, "message": message}
        if request_id is not None:
            out["request_id"] = request_id
        await self.send(out)

    async def _ok(self, request_id: Any) -> None:
        if request_id is not None:
            await self.send({"event": "ok", "request_id": request_id})

    async def _handle(self, frame: dict[str, Any], request_id: Any) -> None:
        kind = frame.get("event")
        if kind == "ping":
            await self.send({"event": "pong"})
        elif kind == "pong":
            pass
        elif kind == "agent.register":
            await self._register(frame, request_id)
        elif kind in ("reply.start", "reply.chunk", "reply.end", "reply.error"):
            self._reply(kind, frame)
        elif kind == "tool.result":
            call_id = _str(frame, "tool_call_id")
            if "result" not in frame:
                raise FrameError("invalid_frame", "`result` is required")
            if not self.link.tool_result(call_id, frame["result"]):
                raise FrameError("unknown_tool_call", f"no pending tool call {call_id!r}")
        elif kind in ("session.pause", "session.resume"):
            await self._pause(kind == "session.pause", frame, request_id)
        elif kind == "session.send":
            session_id = _str(frame, "session_id", max_len=64)
            await self._own(session_id)
            text = frame.get("text")
            owner = await self.socket.store.session(session_id)
            limit = self.socket.directory.get(owner.agent_id).limits.max_text_chars if owner else 4096
            if not isinstance(text, str) or not text.strip() or len(text) > limit:
                raise FrameError(
                    "invalid_frame", f"`text` must be a non-empty string of at most {limit} characters"
                )
            author = frame.get("author") if isinstance(frame.get("author"), str) else self.link.name
            message_id = await self.socket.service.send_human(
                session_id, text, author=str(author)[:128], by=self.principal.name
            )
            out = {"event": "session.sent", "session_id": session_id, "message_id": message_id}
            await self.send({**out, **({"request_id": request_id} if request_id is not None else {})})
        elif isinstance(kind, str) and kind.startswith("session."):
            await self._session_command(kind, frame, request_id)
        elif isinstance(kind, str) and kind.startswith("call."):
            await self._call_command(kind, frame, request_id)
        elif isinstance(kind, str):
            raise FrameError("unknown_event", f"unknown event {kind[:64]!r}")
        else:
            raise FrameError("invalid_frame", "frames need an `event` string")

    async def _register(self, frame: dict[str, Any], request_id: Any) -> None:
        agent_id = _str(frame, "agent_id", max_len=64)
        if not set(agent_id) <= _SLUG:
            raise FrameError("invalid_agent_id", "agent ids are letters, digits, '-' and '_'")
        raw = frame.get("config", {})
        if not isinstance(raw, dict):
            raise FrameError("invalid_config", "`config` must be an object")
        raw = dict(raw)
        raw.setdefault("answer", "llm" if raw.get("llm") else "process")
        try:
            config = AgentConfig.model_validate(raw)
        except ValidationError as exc:
            raise FrameError(
                "invalid_config", describe_validation(f"agent.register {agent_id}", exc)
            ) from None
        last_seq = frame.get("last_seq")
        if last_seq is not None and (
            not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 <= last_seq < 2**63
        ):
            raise FrameError("invalid_frame", "`last_seq` must be a non-negative 64-bit integer")
        config = await self.registrations.check(self.principal, agent_id, config)
        first = agent_id not in self.agents
        self.agents[agent_id] = None  # live events for it are buffered until the replay is sent
        self._buffered.setdefault(agent_id, [])
        if self._inbox is not None:
            self.fanout.follow(self._inbox, agent_id)
        if agent_id in self.socket.directory and self.socket.directory.origin(agent_id) == "config":
            self.socket.directory.put(agent_id, config, origin="config")  # served, never redefined
        else:
            self.socket.directory.put(agent_id, config, origin="process")
            await self.socket.service.declare_agent(agent_id, config.model_dump(mode="json"))
        if first:
            await self.socket.service.record_events(
                [Event(type=EventType.AGENT_CONNECTED, agent=agent_id, data={"process": self.link.name})]
            )
        high = await self.socket.store.last_seq()
        if last_seq is not None:
            cursor = last_seq
            while True:
                batch = await self.socket.store.events_after(cursor, agents=[agent_id], limit=500)
                for event in batch:
                    await self.send(event.to_wire())
                if batch:
                    cursor = batch[-1].seq or cursor
                if len(batch) < 500:
                    break
            high = max(high, cursor)
            await self.send({"event": "stream.caughtUp", "agent_id": agent_id, "seq": cursor})
        reply: dict[str, Any] = {"event": "agent.registered", "agent_id": agent_id, "seq": high}
        if request_id is not None:
            reply["request_id"] = request_id
        await self.send(reply)
        # Flush what arrived live meanwhile, then switch the agent to live forwarding.
        buffer = self._buffered[agent_id]
        while buffer:
            seq, body = buffer.pop(0)
            if seq > high:
                await self.send_text(body.decode())
        del self._buffered[agent_id]
        self.agents[agent_id] = high
        # Only now may turns and tool calls come: the process has seen `agent.registered`.
        await self.hub.attach(agent_id, self.link)

    def _reply(self, kind: str, frame: dict[str, Any]) -> None:
        message_id = _str(frame, "message_id", max_len=64)
        if kind == "reply.start":
            if not self.link.reply(message_id, ReplyItem("start")):
                raise FrameError("unknown_turn", f"no turn {message_id!r} is waiting for a reply")
            return
        if kind == "reply.chunk":
            token = frame.get("token", "")
            if not isinstance(token, str):
                raise FrameError("invalid_frame", "`token` must be a string")
            item = ReplyItem("chunk", token)
        elif kind == "reply.end":
            text = frame.get("text") or ""
            item = ReplyItem("end", text if isinstance(text, str) else "")
        else:
            message = frame.get("message")
            item = ReplyItem("error", message if isinstance(message, str) else "unspecified error")
        if not self.link.reply(message_id, item):
            raise FrameError("unknown_turn", f"no turn {message_id!r} is waiting for a reply")

    async def _own(self, session_id: str) -> None:
        session = await self.socket.store.session(session_id)
        if session is None or not self.socket.access.sees_session(self.principal, session):
            raise FrameError("unknown_session", f"no session {session_id!r}")
        if session.agent_id not in self.agents:
            raise FrameError(
                "forbidden",
                f"session {session_id} belongs to agent {session.agent_id!r}, "
                "which this connection has not registered",
            )

    async def _pause(self, paused: bool, frame: dict[str, Any], request_id: Any) -> None:
        agent_id = _str(frame, "agent_id", max_len=64)
        if agent_id not in self.agents:
            raise FrameError("forbidden", f"agent {agent_id!r} is not registered on this connection")
        session_id = frame.get("session_id")
        contact = frame.get("contact")
        if session_id is not None and not isinstance(session_id, str):
            raise FrameError("invalid_frame", "`session_id` must be a string")
        if contact is not None and not isinstance(contact, str):
            raise FrameError("invalid_frame", "`contact` must be a string")
        changed = await self.socket.service.set_paused(
            agent_id, paused, session_id=session_id, contact=contact, by=self.principal.name
        )
        out: dict[str, Any] = {
            "event": "session.paused" if paused else "session.resumed",
            "agent_id": agent_id,
            "sessions": changed,
        }
        if session_id is not None:
            out["session_id"] = session_id
        if contact is not None:
            out["contact"] = contact
        if request_id is not None:
            out["request_id"] = request_id
        await self.send(out)

    async def _session_command(self, kind: str, frame: dict[str, Any], request_id: Any) -> None:
        service, store = self.socket.service, self.socket.store
        session_id = _str(frame, "session_id", max_len=64)
        session = await store.session(session_id)
        if session is None or not self.socket.access.sees_session(self.principal, session):
            raise FrameError("unknown_session", f"no session {session_id!r}")
        if session.agent_id not in self.agents:
            raise FrameError(
                "forbidden",
                f"session {session_id} belongs to agent {session.agent_id!r}, "
                "which this connection has not registered",
            )
        if kind == "session.set_prompt":
            prompt = frame.get("prompt")
            if not isinstance(prompt, str):
                raise FrameError("invalid_frame", "`prompt` must be a string")
            await service.update_session(session_id, prompt=prompt)
        elif kind == "session.add_context":
            await service.add_note(session_id, _str(frame, "text", max_len=16_384))
        elif kind == "session.set_prompt_vars":
            values = frame.get("vars")
            if not isinstance(values, dict):
                raise FrameError("invalid_frame", "`vars` must be an object")
            merged = {**session.prompt_vars, **values}
            await service.update_session(
                session_id, prompt_vars={k: v for k, v in merged.items() if v is not None}
            )
        elif kind == "session.set_history":
            await service.replace_history(session_id, _history(frame.get("messages")))
        elif kind == "session.clear_history":
            await service.replace_history(session_id, [])
        elif kind == "session.get_history":
            messages = await store.messages(session_id)
            out: dict[str, Any] = {
                "event": "session.history",
                "session_id": session_id,
                "messages": [
                    {
                        "message_id": m.id,
                        "role": m.role,
                        "source": m.source,
                        "text": m.text,
                        "created_at": m.created_at,
                    }
                    for m in messages
                    if m.role in ("user", "assistant") and m.text
                ],
            }
            if request_id is not None:
                out["request_id"] = request_id
            await self.send(out)
            return
        elif kind == "session.end":
            reason = frame.get("reason") or "closed"
            if not isinstance(reason, str) or len(reason) > 32:
                raise FrameError("invalid_frame", "`reason` must be a short string")
            await service.end_session(session_id, reason, {"by": self.principal.name})
        else:
            raise FrameError("unknown_event", f"unknown event {kind[:64]!r}")
        await self._ok(request_id)

    async def _call_command(self, kind: str, frame: dict[str, Any], request_id: Any) -> None:
        """Phone calls: answer a `call.ringing`, or steer a live call of one's own agent."""
        calls = self.socket.calls
        if calls is None:
            raise FrameError("no_phone", "this gateway has no phone channel")
        if kind in ("call.accept", "call.reject"):
            call_id = _str(frame, "call_id", max_len=64)
            reason = frame.get("reason")
            if reason is not None and reason not in ("busy", "rejected"):
                raise FrameError("invalid_frame", "`reason` must be 'busy' or 'rejected'")
            if not await calls.decide(call_id, kind == "call.accept", reason, self.agents):
                raise FrameError("unknown_call", f"call {call_id!r} is not ringing (answered or timed out)")
            await self._ok(request_id)
            return
        actions = {
            "call.hangup": ("hangup", ()),
            "call.forward": ("forward", ("to",)),
            "call.send_digits": ("digits", ("digits",)),
            "call.set_language": ("language", ("language",)),
            "call.configure": ("configure", ()),
        }
        if kind not in actions:
            raise FrameError("unknown_event", f"unknown event {kind[:64]!r}")
        session_id = _str(frame, "session_id", max_len=64)
        await self._own(session_id)
        action, keys = actions[kind]
        args = {k: frame.get(k) for k in keys}
        if action == "configure":
            settings = frame.get("settings")
            if not isinstance(settings, dict):
                raise FrameError("invalid_frame", "`settings` must be an object")
            args = settings
        if action == "hangup" and isinstance(frame.get("reason"), str):
            args["reason"] = frame["reason"]
        try:
            await calls.control(session_id, action, args, after_reply=frame.get("after_reply") is True)
        except GatewayError as exc:
            raise FrameError(exc.code, exc.message) from None
        await self._ok(request_id)

    # ----------------------------------------------------------------- writer

    async def _writer(self, inbox: Inbox) -> None:
        while True:
            try:
                env = await inbox.get()
            except SubscriptionClosed as exc:
                if exc.overflowed:
                    await self.ws.close(1013, "fell behind; reconnect and register with last_seq")
                return
            seq = env.seq
            if seq is None:  # live-only events (tokens, stream ends) are not for processes
                continue
            name = env.agent
            if name not in self.agents:
                continue
            high = self.agents[name]
            if high is None:
                self._buffered[name].append((seq, env.body))
            elif seq > high:
                await self.send_text(env.body.decode())


def _history(value: Any) -> list[NewMessage]:
    if not isinstance(value, list) or len(value) > 1000:
        raise FrameError("invalid_frame", "`messages` must be a list of at most 1000 {role, text}")
    out = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise FrameError("invalid_frame", "each message needs `role` user|assistant and `text`")
        text = item.get("text", item.get("content"))
        if not isinstance(text, str):
            raise FrameError("invalid_frame", "each message needs a `text` string")
        source = "user" if item["role"] == "user" else str(item.get("source", "agent"))
        out.append(NewMessage(id=ids.message_id(), role=item["role"], text=text, source=source))
    return out
