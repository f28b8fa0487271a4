"""Minimal load-generator clients on raw asyncio protocols (no client library per frame).

A full client library spends more CPU per frame than the servers under test do, so on
a 2-core machine it would measure itself. These protocols do only what a benchmark
needs: an HTTP/1.1 request or a WebSocket handshake, then frame parsing straight out
of `data_received`, with the arrival time of each chunk handed to a callback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

from bench.common import HOST

# ----------------------------------------------------------------- WebSocket


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


# on_message(payload, t_perf, t_wall) for each text message
OnMessage = Callable[[bytes, float, float], None]


class WsClient(asyncio.Protocol):
    def __init__(self, path: str, on_message: OnMessage) -> None:
        self.path = path
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, path: str, on_message: OnMessage, timeout: float = 30) -> WsClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(path, on_message), HOST, port)
        async with asyncio.timeout(timeout):
            await proto.opened
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(0x1, text.encode()))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        t_perf, t_wall = time.perf_counter(), time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            del buf[: end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, idx = b1 & 0x7F, pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, idx = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, idx = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size < idx + n:
                break
            payload = bytes(buf[idx : idx + n])
            pos = idx + n
            self._frame(b0 & 0x0F, bool(b0 & 0x80), payload, t_perf, t_wall)
        if pos:
            del buf[:pos]

    def _frame(self, opcode: int, fin: bool, payload: bytes, t_perf: float, t_wall: float) -> None:
        if opcode in (0x1, 0x2, 0x0):
            if not fin or self._fragments:
                self._fragments.append(payload)
                if not fin:
                    return
                payload, self._fragments = b"".join(self._fragments), []
            self.on_message(payload, t_perf, t_wall)
        elif opcode == 0x9 and self.transport is not None:  # ping → pong
            self.transport.write(ws_frame(0xA, payload))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if not self.closed.done():
                self.closed.set_result(code)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(ws_frame(0x8, payload[:2]))
                self.transport.close()


# ----------------------------------------------------------------------- SSE

# on_frame(frame_without_trailing_blank_line, t_wall) for each SSE frame (comments included)
OnFrame = Callable[[bytes, float], None]


class SseClient(asyncio.Protocol):
    """GET a text/event-stream; de-chunks the body and splits it into frames."""

    def __init__(self, path: str, on_frame: OnFrame, headers: dict[str, str] | None = None) -> None:
        self.path = path
        self.on_frame = on_frame
        self.headers = headers or {}
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.text = bytearray()
        self.headers_done = False
        self.chunked = False
        self.chunk_left = 0
        self.need_crlf = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        on_frame: OnFrame,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> SseClient:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(lambda: cls(path, on_frame, headers), HOST, port)
            await proto.opened
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost before the response: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        t_wall = time.time()
        raw = self.raw
        raw += data
        if not self.headers_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            del raw[: end + 4]
            if not head.startswith(b"http/1.1 200"):
                self.opened.set_exception(ConnectionError(f"refused: {bytes(head[:80])!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.headers_done = True
            self.chunked = b"transfer-encoding: chunked" in head
            self.opened.set_result(None)
        if self.chunked:
            body = self._dechunk()
        else:
            body, self.raw = bytes(raw), bytearray()
        if not body:
            return
        text = self.text
        text += body.replace(b"\r\n", b"\n")
        pos = 0
        while True:
            end = text.find(b"\n\n", pos)
            if end < 0:
                break
            self.on_frame(bytes(text[pos:end]), t_wall)
            pos = end + 2
        if pos:
            del text[:pos]

    def _dechunk(self) -> bytes:
        raw, out, pos = self.raw, [], 0
        while True:
            if self.chunk_left:
                take = min(self.chunk_left, len(raw) - pos)
                out.append(bytes(raw[pos : pos + take]))
                pos += take
                self.chunk_left -= take
                if self.chunk_left:
                    break
                self.need_crlf = True
            if self.need_crlf:
                if len(raw) - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(bytes(raw[pos:nl]).split(b";")[0], 16)
            pos = nl + 2
            if size == 0:
                self.close()
                break
            self.chunk_left = size
        if pos:
            del raw[:pos]
        return b"".join(out)


# ------------------------------------------------------------ HTTP/1.1 keep-alive

# on_body(piece, t_perf) for each piece of (de-chunked) response body as it arrives
OnBody = Callable[[bytes, float], None]


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    `request(raw)` writes a complete request and returns a future of
    `(status, body)`; the body (Content-Length or chunked) is also handed to
    `on_body` piece by piece with its arrival time, for streamed responses.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[tuple[int, bytes]] | None = None
        self.on_body: OnBody | None = None
        self._reset()
        self.lost: BaseException | None = None

    def _reset(self) -> None:
        self.status = 0
        self.in_body = False
        self.chunked = False
        self.left = 0  # bytes left of the body (Content-Length) or of the current chunk
        self.need_crlf = False
        self.body: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> HttpConn:
        _, proto = await asyncio.get_running_loop().create_connection(cls, HOST, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost mid-response: {exc}"))

    def request(self, raw: bytes, on_body: OnBody | None = None) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and (self.fut is None or self.fut.done())
        if self.lost is not None:
            raise ConnectionError(f"connection is closed: {self.lost}")
        self._reset()
        self.on_body = on_body
        self.fut = self.loop.create_future()
        self.transport.write(raw)
        return self.fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        t_perf = time.perf_counter()
        buf = self.buf
        buf += data
        if not self.in_body:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.status = int(head[9:12])
            self.in_body = True
            if b"transfer-encoding: chunked" in head:
                self.chunked = True
            else:
                i = head.find(b"content-length:")
                self.left = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
        if self.chunked:
            self._dechunk(t_perf)
        else:
            take = min(self.left, len(buf))
            if take:
                self._piece(bytes(buf[:take]), t_perf)
                del buf[:take]
                self.left -= take
            if not self.left:
                self._finish()

    def _piece(self, piece: bytes, t_perf: float) -> None:
        self.body.append(piece)
        if self.on_body is not None:
            self.on_body(piece, t_perf)

    def _finish(self) -> None:
        self.in_body = False
        if self.fut is not None and not self.fut.done():
            self.fut.set_result((self.status, b"".join(self.body)))

    def _dechunk(self, t_perf: float) -> None:
        raw, pos, out = self.buf, 0, []
        while True:
            if self.left:
                take = min(self.left, len(raw) - pos)
                out.append(bytes(raw[pos : pos + take]))
                pos += take
                self.left -= take
                if self.left:
                    break
                self.need_crlf = True
            if self.need_crlf:
                if len(raw) - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(bytes(raw[pos:nl]).split(b";")[0], 16)
            if size == 0:
                if len(raw) - (nl + 2) < 2:  # the blank line after the last chunk: not yet
                    break
                del raw[: nl + 4]
                if out:
                    self._piece(b"".join(out), t_perf)
                self._finish()
                return
            pos = nl + 2
            self.left = size
        if pos:
            del raw[:pos]
        if out:
            self._piece(b"".join(out), t_perf)
