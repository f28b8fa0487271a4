"""A real, tiny HTTP/1.1 server on 127.0.0.1 that answers with scripted replies.

Written on raw asyncio streams rather than a framework so that a test controls
every byte and every pause: a body can be sent in pieces split anywhere (each
piece is its own chunk and its own socket write), the server can stall before
the headers or in the middle of a body, or drop the connection. It records the
requests it received and notices when a client hangs up mid-response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    pieces: Sequence[bytes] = ()
    chunked: bool = True  # Transfer-Encoding: chunked, else Content-Length
    delay: float = 0.0  # pause between pieces
    stall_before: float = 0.0  # pause before the status line (math.inf: forever)
    stall_after: float = 0.0  # pause after the last piece, before the end of the body
    abort: bool = False  # drop the connection instead of ending the body


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Recorded], Reply | Awaitable[Reply]]


class _Gone(Exception):
    """The client closed the connection."""


class ScriptedServer:
    """`async with ScriptedServer() as srv: srv.script([Reply(...)]); srv.url`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.client_gone = asyncio.Event()  # a client hung up before a response ended
        self.connections = 0  # accepted so far (1 for n requests = keep-alive works)
        self._queues: dict[str | None, deque[Reply]] = {}
        self._routes: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, replies: Sequence[Reply], path: str | None = None) -> None:
        """Queue replies for `path` (or for any path without its own queue)."""
        self._queues.setdefault(path, deque()).extend(replies)

    def route(self, path: str, handler: Handler) -> None:
        """Answer every request to `path` with `handler(request)`."""
        self._routes[path] = handler

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _answer(self, request: Recorded) -> Reply:
        path = request.path.split("?", 1)[0]
        if path in self._routes:
            reply = self._routes[path](request)
            return await reply if isinstance(reply, Awaitable) else reply
        for key in (path, None):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        message = json.dumps({"error": {"message": f"nothing scripted for {path}"}}).encode()
        return Reply(status=599, headers={"content-type": "application/json"}, pieces=[message])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                reply = await self._answer(request)
                try:
                    if not await _write(reply, reader, writer):
                        return
                except (_Gone, ConnectionError):
                    self.client_gone.set()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Recorded(method=method, path=path, headers=headers, body=body)


async def _write(reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Send one reply; False when the connection must close afterwards."""
    watcher = asyncio.ensure_future(reader.read(1))  # b"" once the client hangs up

    async def pause(seconds: float) -> None:
        if seconds <= 0:
            if watcher.done():
                raise _Gone
            return
        await asyncio.wait({watcher}, timeout=None if math.isinf(seconds) else seconds)
        if watcher.done():
            raise _Gone

    try:
        await pause(reply.stall_before)
        headers = {k.lower(): v for k, v in reply.headers.items()}
        pieces = [p for p in reply.pieces if p]
        bodyless = reply.status in (204, 304)
        if bodyless:
            pieces = []
        elif reply.chunked:
            headers["transfer-encoding"] = "chunked"
        else:
            headers["content-length"] = str(sum(len(p) for p in pieces))
        phrase = _phrase(reply.status)
        head = f"HTTP/1.1 {reply.status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode("latin-1") + b"\r\n")
        await writer.drain()
        for i, piece in enumerate(pieces):
            if i and reply.delay:
                await pause(reply.delay)
            framed = reply.chunked and not bodyless
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if framed else piece)
            await writer.drain()
            await pause(0)
        await pause(reply.stall_after)
        if reply.abort:
            writer.transport.abort()
            return False
        if reply.chunked and not bodyless:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return headers.get("connection", "").lower() != "close"
    finally:
        if not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Scripted"
