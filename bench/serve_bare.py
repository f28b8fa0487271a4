"""Bare baselines in one Starlette app: `python -m bench.serve_bare --port N`.

- `WS /chat/ws`: on `{"event":"message","text":…}` streams the words back as
  `{"event":"chat.token","text":w}` frames, then `{"event":"chat.done","text":…}`
  (same word split as the gateway's echo agent; no auth, no storage, no bus).
- `GET /events`: sse-starlette `EventSourceResponse` per subscriber, each fed by
  its own `asyncio.Queue`; a `: connected` comment first (as the gateway sends).
- `POST /publish`: the raw JSON body is put on every subscriber's queue and sent
  as `event: user.message` / `data: <body>`.
- `GET /healthz`.

Same uvicorn setup as the gateway: uvloop/httptools when installed, deflate off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator

import uvicorn
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.common import HOST, raise_nofile

_TOKEN = re.compile(r"\S+\s*|\s+")  # the echo agent's split
SUBSCRIBERS: set[asyncio.Queue[str]] = set()


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def chat_ws(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(dumps({"event": "chat.started", "sessionId": "bare", "agent": "demo"}))
    try:
        while True:
            frame = json.loads(await ws.receive_text())
            if frame.get("event") != "message":
                continue
            text = frame["text"]
            for word in _TOKEN.findall(text):
                await ws.send_text(dumps({"event": "chat.token", "text": word}))
            await ws.send_text(dumps({"event": "chat.done", "text": text}))
    except WebSocketDisconnect:
        pass


async def events(_request: Request) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        SUBSCRIBERS.add(queue)
        try:
            yield ServerSentEvent(comment="connected")
            while True:
                yield ServerSentEvent(data=await queue.get(), event="user.message")
        finally:
            SUBSCRIBERS.discard(queue)

    return EventSourceResponse(stream(), ping=30, sep="\n")


async def publish(request: Request) -> Response:
    body = (await request.body()).decode()
    for queue in tuple(SUBSCRIBERS):
        if not queue.full():
            queue.put_nowait(body)
    return JSONResponse({"subscribers": len(SUBSCRIBERS)})


app = Starlette(
    routes=[
        Route("/healthz", healthz, methods=["GET"]),
        WebSocketRoute("/chat/ws", chat_ws),
        Route("/events", events, methods=["GET"]),
        Route("/publish", publish, methods=["POST"]),
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
        ws_per_message_deflate=False,
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
