"""The LLM path: what the gateway adds between an OpenAI-compatible stream and a chat.

A fake upstream (`bench.serve_fake_llm`, its own process) streams N
`chat.completion.chunk` frames, optionally paced; the message text says how many
and how fast (`tokens=100 pace_ms=20`). Two ways to read the same stream:

- direct (the baseline, "bare" column): `POST /v1/chat/completions` with
  `"stream": true` on a keep-alive raw socket, frames parsed as they arrive;
- gateway: agent `llm` (`answer = "llm"`, base_url = the fake); a token minted with
  `POST /v1/tokens`, `GET /chat/ws?token=…`, `{"event":"message"}`, then
  `chat.token` frames and `chat.done`. The gateway coalesces deltas
  (`token_flush_ms`, default 10 ms), so tokens are counted by text, never by frame.

Measured, each with fresh server processes (fake alone for direct; fake + gateway):

- c=1 TTFT: send → first content token, one stream at a time; p50/p99 of both and
  the difference ("added TTFT"). The stream goes on after its first token (3 tokens,
  20 ms apart), as a model's does: a stream that ended at once would be flushed
  whole at its end and hide the coalescing window. Also measured with the gateway at
  `token_flush_ms = 0`, to separate that window from the rest.
- tokens/s at zero pacing: 1,000-token streams one at a time; all tokens / the sum
  of send → done (`data: [DONE]` / `chat.done`) times.
- C concurrent paced streams (150 x 100 tokens at 50 tokens/s), chats starting
  spread over 1 s, each sending R messages back to back after one unmeasured round.
  Delivered fraction = Σ (tokens - 1) x pace / Σ (last token - send): the time the
  upstream needs for the tokens against the time the user waited for them, TTFT
  included (1.0 = the user got 50 tokens/s). `results.json` also has the rate while
  tokens flow (first → last token, TTFT excluded). TTFT p50/p99 over all measured
  streams.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.clients import HttpConn, WsClient
from bench.common import (
    HOST,
    LoadMonitor,
    ServerProc,
    gather_limited,
    mint_tokens,
    percentile,
    running,
    wait_for_quiet,
)
from bench.report import Row, Target
from bench.serve_fake_llm import expected_text


@dataclass
class LlmParams:
    warmup: int = 5
    ttft_chats: int = 10  # c=1 TTFT: chats (a fresh session each on the gateway) …
    ttft_messages: int = 10  # … x messages each
    ttft_tokens: int = 3  # … of a stream that goes on after its first token:
    ttft_pace_ms: float = 20.0  # 3 tokens 20 ms apart
    fast_tokens: int = 1000  # zero pacing
    fast_chats: int = 3
    fast_messages: int = 4
    chats: int = 150  # concurrent paced streams
    paced_tokens: int = 100
    pace_ms: float = 20.0  # 50 tokens/s
    rounds: int = 3  # measured rounds per chat, after one warm round
    stagger_s: float = 1.0
    flush0: bool = True  # also c=1 TTFT with token_flush_ms = 0


def prompt(tokens: int, pace_ms: float) -> str:
    return f"tokens={tokens} pace_ms={pace_ms:g} (bench)"


@dataclass
class Result:
    sent: float
    first: float
    last: float
    done: float
    tokens: int

    @property
    def ttft(self) -> float:
        return self.first - self.sent


class Stream(Protocol):
    async def ask(self, text: str, tokens: int) -> Result: ...

    def close(self) -> None: ...


class DirectStream:
    """Chat completions straight from the fake, over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: HttpConn | None = None

    @classmethod
    async def open(cls, port: int) -> DirectStream:
        s = cls(port)
        s.conn = await HttpConn.connect(port)
        return s

    async def ask(self, text: str, tokens: int) -> Result:
        assert self.conn is not None
        body = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": text}], "stream": True},
            separators=(",", ":"),
        ).encode()
        raw = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        buf = bytearray()
        parts: list[str] = []
        times = {"first": 0.0, "last": 0.0, "done": 0.0}

        def on_body(piece: bytes, t: float) -> None:
            buf.extend(piece)
            pos = 0
            while True:
                end = buf.find(b"\n\n", pos)
                if end < 0:
                    break
                frame = bytes(buf[pos:end])
                pos = end + 2
                if not frame.startswith(b"data: "):
                    continue
                data = frame[6:]
                if data == b"[DONE]":
                    times["done"] = t
                    continue
                content = json.loads(data)["choices"][0]["delta"].get("content")
                if content:
                    if not parts:
                        times["first"] = t
                    parts.append(content)
                    times["last"] = t
            del buf[:pos]

        sent = time.perf_counter()
        status, _ = await asyncio.wait_for(self.conn.request(raw, on_body), 120)
        text_out = "".join(parts)
        if status != 200 or text_out != expected_text(tokens) or not times["done"]:
            raise RuntimeError(f"direct: HTTP {status}, {len(text_out.split())} of {tokens} tokens")
        return Result(sent, times["first"], times["last"], times["done"], len(text_out.split()))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class GatewayStream:
    """One chat on the gateway's WebSocket, talking to agent `llm`."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.ws: WsClient | None = None
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[str] | None = None
        self.parts: list[str] = []
        self.first = self.last = 0.0

    @classmethod
    async def open(cls, port: int, token: str) -> GatewayStream:
        s = cls()
        s.ws = await WsClient.connect(port, f"/chat/ws?token={token}", s.on_message)
        async with asyncio.timeout(30):
            await s.started
        return s

    def on_message(self, payload: bytes, t_perf: float, _t_wall: float) -> None:
        obj = json.loads(payload)
        event = obj.get("event")
        if event == "chat.token":
            if not self.parts:
                self.first = t_perf
            self.parts.append(obj["text"])
            self.last = t_perf
        elif event == "chat.done":
            if self.done is not None and not self.done.done():
                self.done.set_result(obj["text"])
        elif event == "chat.started":
            if not self.started.done():
                self.started.set_result(None)
        elif event in ("chat.error", "chat.ended"):
            fut = self.done if self.done is not None else self.started
            if not fut.done():
                fut.set_exception(RuntimeError(f"gateway said {obj}"))

    async def ask(self, text: str, tokens: int) -> Result:
        assert self.ws is not None
        self.parts, self.first, self.last = [], 0.0, 0.0
        self.done = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        self.ws.send_text(json.dumps({"event": "message", "text": text}))
        reply = await asyncio.wait_for(self.done, 120)
        done = time.perf_counter()
        streamed = "".join(self.parts)
        want = expected_text(tokens)
        if reply != want or streamed != want:
            raise RuntimeError(
                f"gateway: reply {len(reply.split())} / streamed {len(streamed.split())} of {tokens} tokens"
            )
        return Result(sent, self.first, self.last, done, len(streamed.split()))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Opener:
    """Opens streams; on the gateway, `prepare(n)` first mints the n tokens (they live 60 s)."""

    def __init__(self, kind: str, server: ServerProc) -> None:
        self.kind, self.server = kind, server
        self.tokens: list[str] = []

    async def prepare(self, n: int) -> None:
        if self.kind == "gateway":
            self.tokens = await mint_tokens(self.server.url, n, agent="llm")

    async def __call__(self) -> Stream:
        if self.kind == "direct":
            return await DirectStream.open(self.server.port)
        return await GatewayStream.open(self.server.port, self.tokens.pop())


async def c1_ttft(open_stream: Opener, p: LlmParams) -> dict[str, Any]:
    text = prompt(p.ttft_tokens, p.ttft_pace_ms)
    await open_stream.prepare(1)
    s = await open_stream()
    for _ in range(p.warmup):
        await s.ask(text, p.ttft_tokens)
    s.close()
    await wait_for_quiet()
    await open_stream.prepare(p.ttft_chats)
    monitor = LoadMonitor()
    monitor.start()
    ttft: list[float] = []
    for _ in range(p.ttft_chats):
        s = await open_stream()
        for _ in range(p.ttft_messages):
            ttft.append((await s.ask(text, p.ttft_tokens)).ttft * 1000)
        s.close()
    return {
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "samples": len(ttft),
        "background_cores": monitor.stop(),
    }


async def zero_pacing(open_stream: Opener, p: LlmParams) -> dict[str, Any]:
    text = prompt(p.fast_tokens, 0)
    await open_stream.prepare(1)
    s = await open_stream()
    await s.ask(text, p.fast_tokens)  # warm-up
    s.close()
    await wait_for_quiet()
    await open_stream.prepare(p.fast_chats)
    monitor = LoadMonitor()
    monitor.start()
    results: list[Result] = []
    for _ in range(p.fast_chats):
        s = await open_stream()
        for _ in range(p.fast_messages):
            results.append(await s.ask(text, p.fast_tokens))
        s.close()
    tokens = sum(r.tokens for r in results)
    return {
        "tokens_per_s": tokens / sum(r.done - r.sent for r in results),
        # while tokens flow: (tokens - 1) / (last - first)
        "stream_tokens_per_s": sum(r.tokens - 1 for r in results) / sum(r.last - r.first for r in results),
        "ttft_p50_ms": percentile([r.ttft * 1000 for r in results], 50),
        "streams": len(results),
        "background_cores": monitor.stop(),
    }


async def paced(open_stream: Opener, p: LlmParams, servers: list[ServerProc]) -> dict[str, Any]:
    text = prompt(p.paced_tokens, p.pace_ms)
    await wait_for_quiet()
    await open_stream.prepare(p.chats)
    opened = await gather_limited([open_stream() for _ in range(p.chats)], 50)
    for s in opened:
        if isinstance(s, BaseException):
            raise s
    streams: list[Stream] = opened
    results: list[Result] = []
    errors: list[str] = []
    rng = random.Random(1)
    monitor = LoadMonitor()
    monitor.start()

    async def chat(s: Stream) -> None:
        await asyncio.sleep(rng.uniform(0, p.stagger_s))
        for r in range(p.rounds + 1):
            try:
                res = await s.ask(text, p.paced_tokens)
            except Exception as exc:  # counted, reported; the other chats go on
                errors.append(repr(exc))
                return
            if r:
                results.append(res)

    cpu0 = [srv.cpu_seconds() for srv in servers]
    client0, t0 = _client_cpu(), time.perf_counter()
    await asyncio.gather(*(chat(s) for s in streams))
    wall = time.perf_counter() - t0
    monitor.stop()
    cores = {srv.kind: (srv.cpu_seconds() - c) / wall for srv, c in zip(servers, cpu0, strict=True)}
    client_cores = (_client_cpu() - client0) / wall
    for s in streams:
        s.close()
    offered = 1000 / p.pace_ms
    ttft = [r.ttft * 1000 for r in results]
    ideal = sum((r.tokens - 1) * p.pace_ms / 1000 for r in results)
    # while tokens flow (first → last token), whatever the wait before the first
    flowing = sum(r.tokens - 1 for r in results) / sum(r.last - r.first for r in results) if results else 0.0
    return {
        "streams": len(results),
        "expected_streams": p.chats * p.rounds,
        "errors": len(errors),
        "first_errors": errors[:3],
        "offered_tokens_per_s_per_stream": offered,
        # send → last token, against the (N - 1) x pace the upstream needs: TTFT included
        "delivered_fraction": ideal / sum(r.last - r.sent for r in results) if results else 0.0,
        "flowing_tokens_per_s_per_stream": flowing,
        "flowing_fraction": flowing / offered,
        "offered_aggregate_tokens_per_s": offered * p.chats,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_max_ms": max(ttft, default=float("nan")),
        "stream_s_p50": percentile([r.last - r.sent for r in results], 50),
        "stream_s_p99": percentile([r.last - r.sent for r in results], 99),
        "wall_s": wall,
        "server_cores": cores,
        "client_cores": client_cores,
        "background_cores": monitor.background_cores,
    }


async def measure_direct(p: LlmParams, log_dir: Path) -> dict[str, Any]:
    async with running("fake_llm", log_dir) as fake:
        opener = Opener("direct", fake)
        out = {
            "c1": await c1_ttft(opener, p),
            "fast": await zero_pacing(opener, p),
            "paced": await paced(opener, p, [fake]),
        }
    out["background_cores"] = fake.background_cores
    return out


async def measure_gateway(
    p: LlmParams, log_dir: Path, *, full: bool, flush_ms: float | None
) -> dict[str, Any]:
    async with running("fake_llm", log_dir) as fake:
        args = ["--llm-url", fake.url]
        if flush_ms is not None:
            args += ["--token-flush-ms", f"{flush_ms:g}"]
        async with running("gateway", log_dir, args=args) as gw:
            opener = Opener("gateway", gw)
            out: dict[str, Any] = {"c1": await c1_ttft(opener, p)}
            if full:
                out["fast"] = await zero_pacing(opener, p)
                out["paced"] = await paced(opener, p, [gw, fake])
        out["background_cores"] = gw.background_cores
    out["fake_background_cores"] = fake.background_cores
    return out


async def run(p: LlmParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    direct = await measure_direct(p, log_dir)
    gw = await measure_gateway(p, log_dir, full=True, flush_ms=None)
    gw0 = await measure_gateway(p, log_dir, full=False, flush_ms=0) if p.flush0 else None
    d1, g1 = direct["c1"], gw["c1"]
    dp, gp = direct["paced"], gw["paced"]
    c, rate = p.chats, 1000 / p.pace_ms
    rows = [
        Row("llm", "LLM TTFT p50, c=1", "ms", g1["ttft_p50_ms"], d1["ttft_p50_ms"]),
        Row("llm", "LLM TTFT p99, c=1", "ms", g1["ttft_p99_ms"], d1["ttft_p99_ms"]),
        Row(
            "llm",
            "LLM added TTFT p50, c=1",
            "ms",
            g1["ttft_p50_ms"] - d1["ttft_p50_ms"],
            None,
            Target("abs_max", 4),
        ),
        Row("llm", "LLM added TTFT p99, c=1", "ms", g1["ttft_p99_ms"] - d1["ttft_p99_ms"], None),
    ]
    if gw0 is not None:
        rows.append(
            Row(
                "llm",
                "LLM added TTFT p50, c=1, token_flush_ms=0",
                "ms",
                gw0["c1"]["ttft_p50_ms"] - d1["ttft_p50_ms"],
                None,
                Target("abs_max", 4),
            )
        )
    rows += [
        Row(
            "llm",
            f"LLM tokens/s, zero pacing ({p.fast_tokens} tokens)",
            "tok/s",
            gw["fast"]["tokens_per_s"],
            direct["fast"]["tokens_per_s"],
        ),
        Row(
            "llm",
            f"LLM delivered of offered, {c} streams x {rate:g} tok/s",
            "x",
            gp["delivered_fraction"],
            dp["delivered_fraction"],
            Target("abs_min", 0.9),
        ),
        Row(
            "llm",
            f"LLM rate while tokens flow (TTFT excluded), {c} streams",
            "x",
            gp["flowing_fraction"],
            dp["flowing_fraction"],
        ),
        Row("llm", f"LLM TTFT p50, {c} paced streams", "ms", gp["ttft_p50_ms"], dp["ttft_p50_ms"]),
        Row("llm", f"LLM TTFT p99, {c} paced streams", "ms", gp["ttft_p99_ms"], dp["ttft_p99_ms"]),
        Row(
            "llm",
            f"LLM streams completed, {c} paced streams",
            "%",
            100 * gp["streams"] / gp["expected_streams"],
            100 * dp["streams"] / dp["expected_streams"],
        ),
        Row(
            "llm",
            f"gateway CPU during {c} paced streams",
            "cores",
            gp["server_cores"]["gateway"],
            None,
        ),
    ]
    details = {"params": p.__dict__, "gateway": gw, "direct": direct}
    if gw0 is not None:
        details["gateway_flush0"] = gw0
    return rows, details
