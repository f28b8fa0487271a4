"""A fake OpenAI-compatible streaming LLM: `python -m bench.serve_fake_llm --port N`.

`POST /v1/chat/completions` with `"stream": true` answers `text/event-stream`:
`data: {chat.completion.chunk}` frames — a role chunk, then N content chunks, then
a `finish_reason: "stop"` chunk and `data: [DONE]`. Each chunk is its own write, as
a real server sends them. The length and pace are read from the *last user message*
(so the same request works directly and through the gateway):

    "tokens=100 pace_ms=20"   → 100 tokens "w0 " … "w99 ", 20 ms apart

The role chunk and the first token go out at once; token i (i ≥ 1) is due at
`t0 + i·pace` (an absolute schedule, so sleeps do not drift). Without a pace every
token is written back to back. Defaults: 20 tokens, no pace.

`GET /healthz`. A bare Starlette app with uvicorn's usual setup (uvloop, httptools).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.common import HOST, raise_nofile

_TOKENS = re.compile(r"tokens=(\d+)")
_PACE = re.compile(r"pace_ms=([0-9.]+)")
_HEAD = 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m",'
ROLE = (
    _HEAD + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
).encode()
STOP = (_HEAD + '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n').encode()
_PRE = (_HEAD + '"choices":[{"index":0,"delta":{"content":"').encode()
_POST = b'"},"finish_reason":null}]}\n\n'


def token(i: int) -> str:
    return f"w{i} "


def expected_text(n: int) -> str:
    return "".join(token(i) for i in range(n))


def frame(i: int) -> bytes:
    return _PRE + token(i).encode() + _POST


def directives(body: dict[str, object]) -> tuple[int, float]:
    """(tokens, pace seconds) from the last user message of a chat-completions body."""
    text = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                break
    n = _TOKENS.search(text)
    pace = _PACE.search(text)
    return (int(n.group(1)) if n else 20), (float(pace.group(1)) / 1000 if pace else 0.0)


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def completions(request: Request) -> Response:
    body = json.loads(await request.body())
    if not body.get("stream"):
        return JSONResponse({"error": {"message": "this fake only streams"}}, status_code=400)
    n, pace = directives(body)

    async def stream() -> AsyncIterator[bytes]:
        t0 = time.monotonic()
        yield ROLE
        for i in range(n):
            if pace and i:
                delay = t0 + i * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield frame(i)
        yield STOP

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


app = Starlette(
    routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
