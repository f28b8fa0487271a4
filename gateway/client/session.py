"""What handlers get: a `Session` to steer, a `Turn` to answer and its `ReplyWriter`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from gateway.client.errors import ConnectionLost

Frame = dict[str, Any]
Send = Callable[[Frame], Awaitable[None]]


class Commands(Protocol):
    """What a `Session` needs from the connection: send a command, await its answer."""

    async def request(self, frame: Frame, *, within: float | None = None) -> Frame: ...


class Session:
    """One conversation of an agent this process registered, steered by commands.

    Every method sends one `session.*` command with a `request_id` and waits for the
    gateway's answer (`ok`, `session.history` or `error`): a refused command raises
    `CommandError`, no answer in time raises `RequestTimeout`, no connection raises
    `NotConnected`. While the process is reconnecting, a command waits for the
    connection (within its timeout).
    """

    __slots__ = ("_commands", "agent_id", "id")

    def __init__(self, commands: Commands, agent_id: str, session_id: str) -> None:
        self._commands = commands
        self.agent_id = agent_id
        self.id = session_id

    def __repr__(self) -> str:
        return f"Session({self.id!r}, agent={self.agent_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and (other.agent_id, other.id) == (self.agent_id, self.id)

    def __hash__(self) -> int:
        return hash((self.agent_id, self.id))

    async def _command(self, event: str, **fields: Any) -> Frame:
        return await self._commands.request({"event": event, "session_id": self.id, **fields})

    async def set_prompt(self, prompt: str) -> None:
        """Replace this session's prompt template (`{{vars}}` still apply)."""
        await self._command("session.set_prompt", prompt=prompt)

    async def add_context(self, text: str) -> None:
        """Append a note to this session's system prompt."""
        await self._command("session.add_context", text=text)

    async def set_prompt_vars(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Merge `{{variable}}` values for this session; a value of `None` removes one.

        `await session.set_prompt_vars({"customer_name": "Ada"})` or
        `await session.set_prompt_vars(customer_name="Ada")`.
        """
        merged = {**(values or {}), **more}
        await self._command("session.set_prompt_vars", vars=merged)

    async def set_history(self, messages: Iterable[Mapping[str, Any]]) -> None:
        """Replace the conversation history the agent sees: `[{"role": "user"|"assistant", "text": …}]`."""
        out: list[Frame] = []
        for m in messages:
            text = m.get("text", m.get("content"))
            item: Frame = {"role": m.get("role"), "text": text}
            if "source" in m:
                item["source"] = m["source"]
            out.append(item)
        await self._command("session.set_history", messages=out)

    async def get_history(self) -> list[dict[str, Any]]:
        """The session's user and assistant messages, oldest first.

        Each is `{"message_id", "role", "source", "text", "created_at"}` (as the gateway sends it).
        """
        answer = await self._command("session.get_history")
        messages = answer.get("messages", [])
        return [dict(m) for m in messages] if isinstance(messages, list) else []

    async def clear_history(self) -> None:
        """Forget the history (the user's unanswered messages stay)."""
        await self._command("session.clear_history")

    async def end(self, reason: str | None = None) -> None:
        """End the session (`session.ended` with `reason`, `closed` by default)."""
        if reason is None:
            await self._command("session.end")
        else:
            await self._command("session.end", reason=reason)

    # Phone calls (sessions on channel `phone`); the gateway answers `call_not_connected`
    # (CommandError) for digits and language when the call has no live relay.

    async def hangup(self, reason: str | None = None, *, after_reply: bool = False) -> None:
        """End the phone call (`after_reply`: once the reply being spoken has been said)."""
        fields: dict[str, Any] = {"after_reply": after_reply}
        if reason is not None:
            fields["reason"] = reason
        await self._command("call.hangup", **fields)

    async def forward(self, to: str, *, after_reply: bool = False) -> None:
        """Transfer the phone call to `to` (`+E164` or `sip:…`)."""
        await self._command("call.forward", to=to, after_reply=after_reply)

    async def send_digits(self, digits: str) -> None:
        """Play DTMF tones on the call (`0-9`, `w` for a pause, `#`, `*`)."""
        await self._command("call.send_digits", digits=digits)

    async def set_language(self, language: str) -> None:
        """Switch the call's speech recognition and synthesis language (e.g. `es-ES`)."""
        await self._command("call.set_language", language=language)

    async def configure_call(self, **settings: Any) -> None:
        """Change the live call's settings: `language`, `voice`, `ttsProvider`,
        `transcriptionProvider`, `speechModel`, `interruptible` (any/speech/dtmf/none),
        `preemptible`, `dtmfDetection`, `hints` (a list). Only those given change."""
        await self._command("call.configure", settings=settings)


@dataclass(frozen=True, slots=True)
class Turn:
    """A user turn to answer (the gateway's `turn` frame), for agents without server-side `llm`."""

    agent_id: str
    session_id: str
    message_id: str  # the id the reply will have; the reply frames carry it
    text: str  # the user's words (several messages that arrived together, joined by newlines)
    session: Session
    history: list[dict[str, Any]] = field(default_factory=list)  # [{role, text, source}], oldest first
    channel: str | None = None
    contact: dict[str, Any] | None = None  # {id, name?} or None
    context: dict[str, Any] = field(default_factory=dict)  # UI context set by the web page
    metadata: dict[str, Any] = field(default_factory=dict)
    in_reply_to: str | None = None  # the last user message's id
    raw: Frame = field(default_factory=dict)  # the frame as received

    def chat_messages(self, system: str | None = None) -> list[dict[str, str]]:
        """History plus this turn as OpenAI-style `[{role, content}]`, for calling an LLM yourself."""
        out: list[dict[str, str]] = []
        if system:
            out.append({"role": "system", "content": system})
        for m in self.history:
            role, text = m.get("role"), m.get("text")
            if role in ("user", "assistant") and isinstance(text, str) and text:
                out.append({"role": str(role), "content": text})
        out.append({"role": "user", "content": self.text})
        return out


class ReplyWriter:
    """Streams the reply to one `Turn`: `reply.start`, `reply.chunk`…, `reply.end` (or `reply.error`).

        async with reply:                 # reply.start; reply.end on exit, reply.error on an exception
            async for token in my_llm(turn.text):
                await reply.write(token)

    `write` starts the reply if needed; `end(text)` with nothing written sends the
    whole reply at once. After `end` or `error`, further writes raise `RuntimeError`.
    If the connection drops, `write`/`end` raise `ConnectionLost` (the gateway fails the
    turn; nothing half-done is stored).
    """

    def __init__(self, send: Send, session_id: str, message_id: str, in_reply_to: str | None = None) -> None:
        self._send = send
        self.session_id = session_id
        self.message_id = message_id
        self.in_reply_to = in_reply_to
        self.started = False
        self.finished = False
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """The text written so far."""
        return "".join(self._parts)

    def _frame(self, event: str, **fields: Any) -> Frame:
        return {"event": event, "session_id": self.session_id, "message_id": self.message_id, **fields}

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError(f"the reply to {self.message_id} has already ended")

    async def start(self) -> None:
        """Send `reply.start` (once; `write` and `end` call it for you)."""
        self._check_open()
        if self.started:
            return
        self.started = True
        fields: dict[str, Any] = {}
        if self.in_reply_to:
            fields["in_reply_to"] = self.in_reply_to
        await self._send(self._frame("reply.start", **fields))

    async def write(self, token: str) -> None:
        """Send one delta of the reply's text (empty strings are skipped)."""
        if not isinstance(token, str):
            raise TypeError(f"reply tokens are strings, not {type(token).__name__}")
        self._check_open()
        if not token:
            return
        await self.start()
        self._parts.append(token)
        await self._send(self._frame("reply.chunk", token=token))

    async def end(self, text: str | None = None) -> None:
        """End the reply. `text`, when nothing was written, is the whole reply."""
        self._check_open()
        await self.start()
        self.finished = True
        if text and not self._parts:
            self._parts.append(text)
            await self._send(self._frame("reply.end", text=text))
        else:
            await self._send(self._frame("reply.end"))

    async def error(self, message: str) -> None:
        """Fail the turn: the person gets an error, nothing is stored as the reply."""
        self._check_open()
        self.finished = True
        await self._send(self._frame("reply.error", message=message or "error"))

    async def __aenter__(self) -> ReplyWriter:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.finished:
            return
        if exc is None:
            await self.end()
        elif isinstance(exc, asyncio.CancelledError):
            self.finished = True  # the gateway cancelled the turn (or the socket went): nothing to send
        elif isinstance(exc, Exception):
            if isinstance(exc, ConnectionLost):
                self.finished = True
                return
            await self.error(error_text(exc))


def error_text(exc: BaseException) -> str:
    """`"<ExceptionClass>: <message>"`, as tool errors and failed replies report it."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
