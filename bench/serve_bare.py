"""Bare baselines in one Starlette app: `python -m bench.serve_bare --port N`.

- `WS /chat/ws`: on `{"event":"message","text":…}` streams the words back as
  `{"event":"chat.token","text":w}` frames, then `{"event":"chat.done","text":…}`
  (same word split as the gateway's echo agent; no auth, no storage, no bus).
- `GET /events`: sse-starlette `EventSourceResponse` per subscriber, each fed by
  its own `asyncio.Queue`; a `: connected` comment first (as the gateway sends).
- `POST /publish`: the raw JSON body is put on every subscriber's queue and sent
  as `event: user.message` / `data: <body>`.
- `POST /whatsapp/webhook`: the WhatsApp webhook baseline "verify + parse": HMAC-SHA256
  of the raw body with the app secret against `X-Hub-Signature-256` (401 when it does
  not match), `json.loads`, `{"ok":true}`.
- `POST /whatsapp/webhook-gc`: the same, then the group-commit baseline of
  PERFORMANCE.md: each message becomes a row queued for ONE writer task, which
  inserts what has queued up (≤ 64 rows) in one SQLAlchemy Core transaction
  (aiosqlite, WAL, synchronous=NORMAL, as the gateway configures SQLite) and answers
  each request only after its own commit. Needs `--db`; with `--database-url` (an
  asyncpg URL) it commits to that PostgreSQL database instead.
- `GET /healthz`.

Same uvicorn setup as the gateway: uvloop/httptools when installed, deflate off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.common import HOST, WA_APP_SECRET, raise_nofile

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


_SECRET = WA_APP_SECRET.encode()


def _verified(raw: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    digest = hmac.new(_SECRET, raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(digest, header[7:])


def _unauthorized() -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "invalid_signature", "message": "invalid or missing X-Hub-Signature-256"}},
        status_code=401,
    )


async def wa_webhook(request: Request) -> Response:
    raw = await request.body()
    if not _verified(raw, request.headers.get("x-hub-signature-256")):
        return _unauthorized()
    json.loads(raw)
    return JSONResponse({"ok": True})


class GroupCommit:
    """One writer task; each request waits for the commit of the batch holding its rows."""

    MAX_BATCH = 64

    def __init__(self, db: Path, url: str | None = None) -> None:
        from sqlalchemy import Column, Integer, MetaData, String, Table, Text, event
        from sqlalchemy.ext.asyncio import create_async_engine

        if url is not None:  # PostgreSQL (asyncpg), the gateway's pool defaults
            self.engine = create_async_engine(url)
        else:
            self.engine = create_async_engine(f"sqlite+aiosqlite:///{db}", connect_args={"timeout": 30})

            @event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        self.meta = MetaData()
        self.table = Table(
            "messages",
            self.meta,
            Column("id", Integer, primary_key=True),
            Column("wamid", String, nullable=False, unique=True),
            Column("phone_number_id", String, nullable=False),
            Column("sender", String, nullable=False),
            Column("ts", String, nullable=False),
            Column("body", Text, nullable=False),
        )
        self.queue: asyncio.Queue[tuple[list[dict[str, Any]], asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches = 0

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.meta.create_all)
        self.task = asyncio.create_task(self._writer())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.engine.dispose()

    async def store(self, rows: list[dict[str, Any]]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((rows, fut))
        await fut

    async def _writer(self) -> None:
        insert = self.table.insert()
        while True:
            batch = [await self.queue.get()]
            count = len(batch[0][0])
            while count < self.MAX_BATCH and not self.queue.empty():
                item = self.queue.get_nowait()
                batch.append(item)
                count += len(item[0])
            rows = [r for item in batch for r in item[0]]
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(insert, rows)
            except Exception as exc:  # every waiter of the batch fails with it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


GROUP: GroupCommit | None = None


async def wa_webhook_gc(request: Request) -> Response:
    raw = await request.body()
    if not _verified(raw, request.headers.get("x-hub-signature-256")):
        return _unauthorized()
    payload = json.loads(raw)
    rows = [
        {
            "wamid": m["id"],
            "phone_number_id": change["value"]["metadata"]["phone_number_id"],
            "sender": m["from"],
            "ts": m["timestamp"],
            "body": m.get("text", {}).get("body", ""),
        }
        for entry in payload["entry"]
        for change in entry["changes"]
        for m in change["value"].get("messages", ())
    ]
    if rows:
        if GROUP is None:
            return JSONResponse({"error": "no --db"}, status_code=500)
        await GROUP.store(rows)
    return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    if GROUP is not None:
        await GROUP.start()
    try:
        yield
    finally:
        if GROUP is not None:
            await GROUP.stop()


app = Starlette(
    routes=[
        Route("/healthz", healthz, methods=["GET"]),
        WebSocketRoute("/chat/ws", chat_ws),
        Route("/events", events, methods=["GET"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/whatsapp/webhook", wa_webhook, methods=["POST"]),
        Route("/whatsapp/webhook-gc", wa_webhook_gc, methods=["POST"]),
    ],
    lifespan=lifespan,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="SQLite file for the group-commit baseline")
    parser.add_argument("--database-url", help="the group commit stores here instead (PostgreSQL)")
    args = parser.parse_args()
    raise_nofile()
    global GROUP
    if args.db is not None:
        GROUP = GroupCommit(args.db, args.database_url)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        ws_per_message_deflate=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
