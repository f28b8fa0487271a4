"""A fake OpenAI-compatible chat-completions server, over real HTTP on 127.0.0.1.

    async with FakeOpenAI() as fake:
        fake.script([text_reply("Hel", "lo"), tool_reply([("c1", "lookup", '{"id": 1}')])])
        ...  # point an LlmAgent at fake.url
        fake.bodies  # the JSON of each chat-completions request received

Builders return `Reply`s whose bytes can be split anywhere (`awkward` splits
inside multi-byte characters and `data:` prefixes). Other paths (tool URLs) are
served by `fake.route(path, handler)`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from tests.fakes.scripted_http import Recorded, Reply, ScriptedServer

COMPLETIONS = "/v1/chat/completions"
SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` object."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def sse(objects: Iterable[dict[str, Any] | str], *, done: bool = True) -> bytes:
    """`data: <json>\\n\\n` frames (strings are sent as raw data), then `[DONE]`."""
    frames = [f"data: {o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)}\n\n" for o in objects]
    if done:
        frames.append("data: [DONE]\n\n")
    return "".join(frames).encode()


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def awkward(data: bytes) -> list[bytes]:
    """Split just after each `d` of `data:`, after every `\\r`, and inside every multi-byte character."""
    cuts: list[int] = []
    for i, byte in enumerate(data):
        if (byte == 0x64 and data[i : i + 5] == b"data:") or byte == 0x0D:
            cuts.append(i + 1)
        elif byte >= 0xC0:  # lead byte of a multi-byte UTF-8 character
            cuts.append(i + 1)
    pieces, start = [], 0
    for cut in cuts:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    pieces.append(data[start:])
    return [p for p in pieces if p]


def stream_reply(body: bytes, *, pieces: Sequence[bytes] | None = None, delay: float = 0.0) -> Reply:
    return Reply(headers=dict(SSE), pieces=list(pieces) if pieces is not None else [body], delay=delay)


def text_reply(*tokens: str, delay: float = 0.0, split: bool = True, done: bool = True) -> Reply:
    """A streamed answer: a role chunk, one chunk per token, a finish chunk, `[DONE]`."""
    objects = [chunk({"role": "assistant", "content": ""})]
    objects += [chunk({"content": t}) for t in tokens]
    objects.append(chunk(finish="stop"))
    body = sse(objects, done=done)
    if delay:  # one token per piece, paced
        frames = [sse([o], done=False) for o in objects] + ([b"data: [DONE]\n\n"] if done else [])
        return stream_reply(body, pieces=frames, delay=delay)
    return stream_reply(body, pieces=awkward(body) if split else None)


def tool_reply(
    calls: Sequence[tuple[str, str, str]], *, text: str = "", fragment: int = 4, split: bool = True
) -> Reply:
    """Streamed tool calls `(id, name, arguments)`: id and name first, arguments in
    `fragment`-character pieces, the calls' fragments interleaved (as OpenAI may)."""
    objects: list[dict[str, Any]] = [chunk({"role": "assistant", "content": None})]
    if text:
        objects.append(chunk({"content": text}))
    for index, (call_id, name, _) in enumerate(calls):
        function = {"name": name, "arguments": ""}
        head = {"index": index, "id": call_id, "type": "function", "function": function}
        objects.append(chunk({"tool_calls": [head]}))
    parts = [[args[i : i + fragment] for i in range(0, len(args), fragment)] for _, _, args in calls]
    for step in range(max((len(p) for p in parts), default=0)):
        for index, fragments in enumerate(parts):
            if step < len(fragments):
                delta = {"index": index, "function": {"arguments": fragments[step]}}
                objects.append(chunk({"tool_calls": [delta]}))
    objects.append(chunk(finish="tool_calls"))
    body = sse(objects)
    return stream_reply(body, pieces=awkward(body) if split else None)


def error_reply(status: int, message: str = "upstream failure") -> Reply:
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    return Reply(status=status, headers={"content-type": "application/json"}, pieces=[body], chunked=False)


def stalled(*, headers_first: bool = True, seconds: float = math.inf) -> Reply:
    """Nothing ever comes: either no headers at all, or headers and no body."""
    if headers_first:
        return Reply(headers=dict(SSE), pieces=[b": waiting\n\n"], stall_after=seconds)
    return Reply(stall_before=seconds)


class FakeOpenAI(ScriptedServer):
    @property
    def url(self) -> str:
        """The `base_url` to configure (`…/v1`)."""
        return self.base_url + "/v1"

    def script(self, replies: Sequence[Reply], path: str | None = COMPLETIONS) -> None:
        super().script(replies, path)

    @property
    def completions(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == COMPLETIONS]

    @property
    def bodies(self) -> list[Any]:
        return [r.json() for r in self.completions]
