"""A fake webhook agent backend, over real HTTP on 127.0.0.1.

    async with FakeWebhookBackend() as backend:
        backend.script([ndjson_reply(["Hel", "lo"])])
        ...  # point a WebhookAgent at backend.url
        backend.requests[0]  # method, headers, raw body (to check the signature)

One builder per answer format the gateway accepts, plus errors and stalls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from tests.fakes.openai_server import awkward, chunk, sse
from tests.fakes.scripted_http import Reply, ScriptedServer

HOOK = "/hook"


def sse_openai_reply(tokens: Sequence[str], *, done: bool = True) -> Reply:
    body = sse([chunk({"content": t}) for t in tokens] + [chunk(finish="stop")], done=done)
    return Reply(headers={"content-type": "text/event-stream"}, pieces=awkward(body))


def sse_token_reply(tokens: Sequence[str], *, done: bool = False, delay: float = 0.0) -> Reply:
    frames = [sse([{"token": t}], done=False) for t in tokens]
    if done:
        frames.append(b"data: [DONE]\n\n")
    return Reply(headers={"content-type": "text/event-stream"}, pieces=frames, delay=delay)


def ndjson_reply(tokens: Sequence[str], *, key: str = "token", ctype: str = "application/x-ndjson") -> Reply:
    body = "".join(json.dumps({key: t}, ensure_ascii=False) + "\n" for t in tokens).encode()
    return Reply(headers={"content-type": ctype}, pieces=awkward(body))


def text_reply(pieces: Sequence[bytes], *, ctype: str = "text/plain; charset=utf-8") -> Reply:
    return Reply(headers={"content-type": ctype}, pieces=list(pieces))


def json_reply(text: str) -> Reply:
    body = json.dumps({"text": text}).encode()
    return Reply(headers={"content-type": "application/json"}, pieces=[body], chunked=False)


def raw_reply(status: int, body: bytes, ctype: str = "text/plain") -> Reply:
    return Reply(status=status, headers={"content-type": ctype}, pieces=[body], chunked=False)


def stalled_reply(*, headers_first: bool = False, seconds: float = math.inf) -> Reply:
    if headers_first:
        return Reply(headers={"content-type": "text/plain"}, pieces=[b"thinking"], stall_after=seconds)
    return Reply(stall_before=seconds)


class FakeWebhookBackend(ScriptedServer):
    @property
    def url(self) -> str:
        return self.base_url + HOOK

    def script(self, replies: Sequence[Reply], path: str | None = HOOK) -> None:
        super().script(replies, path)
