"""Incremental parsing of OpenAI-compatible chat-completions streams.

Upstream bytes arrive in whatever pieces the network hands us: a read can end
inside a `data:` line or inside a multi-byte UTF-8 character. `SseDecoder` turns
those pieces into Server-Sent Events (WHATWG rules: `\\n`, `\\r\\n` or `\\r` line
ends, `:` comments, multi-line `data`, events dispatched on a blank line), and
`ChatStreamParser` turns events into JSON chunk objects, stopping at
`data: [DONE]`. Both only ever look at complete lines, so a split can never
change what they produce; they do no per-byte Python work on the hot path.

`ToolCallAssembler` joins streamed `tool_calls` deltas (by `index`) into whole
`ToolCall`s once the model has finished a response.

A stream we cannot understand raises `StreamFormatError`, an `AgentError`, so the
turn runner reports it like any other agent failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.agents.base import ToolCall
from gateway.errors import AgentError
from gateway.sanitizer import load_provider_json

_BOM = b"\xef\xbb\xbf"


class StreamFormatError(AgentError):
    """The upstream stream is not the format it claims to be."""

    code = "agent_bad_stream"


class SseEvent(NamedTuple):
    event: str  # "message" unless the server named it with `event:`
    data: str


class SseDecoder:
    """Bytes in, complete Server-Sent Events out.

    Call `feed` with each piece received and `close` once the body ended; `close`
    also dispatches a last event that the server did not terminate with a blank
    line (lenient: a truncated-but-complete `data:` line is still delivered).
    Undecodable bytes become U+FFFD, as the SSE specification says.
    """

    __slots__ = ("_buf", "_data", "_event", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._skip_lf = False  # the previous piece ended with "\r": a leading "\n" belongs to it
        self._started = False

    def feed(self, piece: bytes) -> list[SseEvent]:
        if self._skip_lf and piece:
            self._skip_lf = False
            if piece[:1] == b"\n":
                piece = piece[1:]
        end = max(piece.rfind(b"\n"), piece.rfind(b"\r"))
        if end < 0:
            self._buf += piece
            return []
        if self._buf:
            head = bytes(self._buf) + piece[: end + 1]
            self._buf.clear()
        else:
            head = piece[: end + 1]
        self._buf += piece[end + 1 :]
        if piece[end] == 0x0D and end == len(piece) - 1:
            self._skip_lf = True
        return self._lines(head.splitlines())

    def close(self) -> list[SseEvent]:
        """Flush what is left once the body ended."""
        lines = [bytes(self._buf)] if self._buf else []
        self._buf.clear()
        lines.append(b"")  # end of stream ends the last event
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[SseEvent]:
        out: list[SseEvent] = []
        for line in lines:
            if not self._started:
                self._started = True
                if line.startswith(_BOM):
                    line = line[3:]
            if not line:
                if self._data:
                    out.append(SseEvent(self._event or "message", "\n".join(self._data)))
                    self._data = []
                self._event = ""
                continue
            if line[0] == 0x3A:  # ":" comment / keep-alive
                continue
            field, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value.decode("utf-8", "replace"))
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
            # `id` and `retry` mean nothing for a one-shot completion stream.
        return out


class ChatStreamParser:
    """Bytes of an OpenAI-compatible stream in, chunk objects (dicts) out.

    `done` turns true at `data: [DONE]`; anything after it is ignored. Events
    with empty data are skipped (some servers use them as keep-alives). When a
    piece holds good chunks and then a malformed one, the good ones are
    returned first and the error is raised by the next `feed` or `close`.
    """

    __slots__ = ("_error", "_sse", "done")

    def __init__(self) -> None:
        self._sse = SseDecoder()
        self._error: StreamFormatError | None = None
        self.done = False

    def feed(self, piece: bytes) -> list[dict[str, Any]]:
        if self.done:
            return []
        return self._chunks(self._sse.feed(piece))

    def close(self) -> list[dict[str, Any]]:
        if self.done:
            return []
        return self._chunks(self._sse.close())

    def _chunks(self, events: list[SseEvent]) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        for event in events:
            data = event.data
            if data == "[DONE]":
                self.done = True
                break
            if not data:
                continue
            try:
                out.append(parse_json_object(data, what="stream chunk"))
            except StreamFormatError as exc:
                if not out:
                    raise
                self._error = exc
                break
        return out


def parse_json_object(data: str | bytes, *, what: str) -> dict[str, Any]:
    """`json.loads` that only accepts an object and fails with a `StreamFormatError`."""
    try:
        value = load_provider_json(data)  # an LLM's text is made safe, never refused
    except (ValueError, RecursionError):
        raise StreamFormatError(f"malformed {what} (not JSON): {_preview(data)}") from None
    if not isinstance(value, dict):
        raise StreamFormatError(f"malformed {what} (not a JSON object): {_preview(data)}")
    return value


def _preview(data: str | bytes) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:200])


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallAssembler:
    """Joins `choices[0].delta.tool_calls` fragments into whole tool calls.

    OpenAI sends `id` and `function.name` in the first delta of each call and
    `function.arguments` in fragments, keyed by `index`; several calls may be
    interleaved. Servers that omit `index` (they send each call whole) get one
    call per new `id`; servers that omit `id` get a generated `call_<index>`.
    A name repeated in later fragments is not appended twice.
    """

    __slots__ = ("_calls", "_last")

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._last = -1

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, deltas: Any) -> None:
        """Feed one delta's `tool_calls` list; ignores entries that are not objects."""
        if not isinstance(deltas, list):
            raise StreamFormatError(f"malformed tool_calls delta: {_preview(json.dumps(deltas))}")
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            call = self._slot(delta)
            call_id = delta.get("id")
            if isinstance(call_id, str) and call_id and not call.id:
                call.id = call_id
            function = delta.get("function")
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if isinstance(name, str) and name and not call.name:
                call.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments += arguments
            elif arguments is not None:  # some servers send the object itself
                call.arguments += json.dumps(arguments, ensure_ascii=False)

    def _slot(self, delta: dict[str, Any]) -> _PartialCall:
        index = delta.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            call_id = delta.get("id")
            last = self._calls.get(self._last)
            if last is not None and (not call_id or call_id == last.id):
                return last
            index = max(self._calls, default=-1) + 1
        self._last = index
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _PartialCall()
        return call

    def calls(self) -> tuple[ToolCall, ...]:
        """The assembled calls, in index order."""
        return tuple(
            ToolCall(id=c.id or f"call_{i}", name=c.name, arguments=c.arguments)
            for i, c in sorted(self._calls.items())
        )
