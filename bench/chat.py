"""Chat WebSocket: time-to-first-token and tokens/s, gateway vs a bare Starlette endpoint.

Each message is N words; the echo agent (zero delay) streams them back one
`chat.token` frame per word, then `chat.done`. TTFT = send → first `chat.token`;
a message's stream time = send → `chat.done`. Sequential: one chat at a time, each
chat (a fresh token and session on the gateway) sends a few messages back to back.
Concurrent: C chats at once, each sending R messages back to back; aggregate
tokens/s = all words / wall time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import WsClient
from bench.common import ServerProc, mint_tokens, percentile, running
from bench.report import Row, Target


@dataclass
class ChatParams:
    words: int = 200
    seq_chats: int = 12
    seq_messages: int = 5
    conc_chats: int = 20
    conc_rounds: int = 10
    warmup_messages: int = 5


class ChatConn:
    def __init__(self) -> None:
        self.ws: WsClient | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[str] | None = None
        self.first: float | None = None
        self.tokens = 0

    @classmethod
    async def open(cls, server: ServerProc, token: str | None) -> ChatConn:
        conn = cls()
        path = "/chat/ws" if token is None else f"/chat/ws?token={token}"
        conn.ws = await WsClient.connect(server.port, path, conn.on_message)
        async with asyncio.timeout(30):
            await conn.started
        return conn

    def on_message(self, payload: bytes, t_perf: float, _t_wall: float) -> None:
        obj = json.loads(payload)
        event = obj.get("event")
        if event == "chat.token":
            if self.first is None:
                self.first = t_perf
            self.tokens += 1
        elif event == "chat.done":
            if self.done is not None and not self.done.done():
                self.done.set_result(obj["text"])
        elif event == "chat.started":
            if not self.started.done():
                self.started.set_result(None)
        elif event in ("chat.error", "chat.ended"):
            fut = self.done if self.done is not None else self.started
            if not fut.done():
                fut.set_exception(RuntimeError(f"server said {obj}"))

    async def ask(self, text: str) -> tuple[float, float, int]:
        """(ttft seconds, stream seconds, token frames) for one message."""
        assert self.ws is not None
        self.first, self.tokens = None, 0
        self.done = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        self.ws.send_text(json.dumps({"event": "message", "text": text}))
        async with asyncio.timeout(60):
            reply = await self.done
        end = time.perf_counter()
        if reply != text or self.first is None:
            raise RuntimeError(f"bad reply: {len(reply)} chars for {len(text)}, {self.tokens} tokens")
        return self.first - sent, end - sent, self.tokens

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure(kind: str, p: ChatParams, log_dir: Path) -> dict[str, Any]:
    text = " ".join(f"w{i}" for i in range(p.words))
    async with running(kind, log_dir) as server:
        needed = 1 + p.seq_chats + p.conc_chats
        tokens: list[str | None] = (
            list(await mint_tokens(server.url, needed)) if kind == "gateway" else [None] * needed
        )
        # warm-up: imports, caches, the first SQLite pages
        conn = await ChatConn.open(server, tokens.pop())
        for _ in range(p.warmup_messages):
            await conn.ask(text)
        conn.close()

        seq_ttft: list[float] = []
        seq_time = 0.0
        seq_words = 0
        for _ in range(p.seq_chats):
            conn = await ChatConn.open(server, tokens.pop())
            for _ in range(p.seq_messages):
                ttft, total, _n = await conn.ask(text)
                seq_ttft.append(ttft * 1000)
                seq_time += total
                seq_words += p.words
            conn.close()

        conns = await asyncio.gather(*(ChatConn.open(server, tokens.pop()) for _ in range(p.conc_chats)))
        conc_ttft: list[float] = []

        async def chat(c: ChatConn) -> None:
            for _ in range(p.conc_rounds):
                ttft, _total, _n = await c.ask(text)
                conc_ttft.append(ttft * 1000)

        await asyncio.gather(*(c.ask(text) for c in conns))  # one warm round, not measured
        cpu0, client0, t0 = server.cpu_seconds(), _client_cpu(), time.perf_counter()
        await asyncio.gather(*(chat(c) for c in conns))
        wall = time.perf_counter() - t0
        server_cores = (server.cpu_seconds() - cpu0) / wall
        client_cores = (_client_cpu() - client0) / wall
        for c in conns:
            c.close()

    return {
        "seq_ttft_p50_ms": percentile(seq_ttft, 50),
        "seq_ttft_p99_ms": percentile(seq_ttft, 99),
        "seq_tokens_per_s": seq_words / seq_time,
        "seq_messages": len(seq_ttft),
        "conc_ttft_p50_ms": percentile(conc_ttft, 50),
        "conc_ttft_p99_ms": percentile(conc_ttft, 99),
        "conc_tokens_per_s": p.conc_chats * p.conc_rounds * p.words / wall,
        "conc_messages": len(conc_ttft),
        "conc_wall_s": wall,
        "conc_server_cores": server_cores,
        "conc_client_cores": client_cores,
        "background_cores": server.background_cores,
    }


async def run(p: ChatParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    bare = await measure("bare", p, log_dir)
    gw = await measure("gateway", p, log_dir)
    c = p.conc_chats
    rows = [
        Row(
            "chat",
            "chat TTFT p50, one chat at a time",
            "ms",
            gw["seq_ttft_p50_ms"],
            bare["seq_ttft_p50_ms"],
            Target("ratio_max", 3),
        ),
        Row(
            "chat", "chat TTFT p99, one chat at a time", "ms", gw["seq_ttft_p99_ms"], bare["seq_ttft_p99_ms"]
        ),
        Row(
            "chat",
            f"chat tokens/s, one stream ({p.words} words)",
            "tok/s",
            gw["seq_tokens_per_s"],
            bare["seq_tokens_per_s"],
            Target("ratio_min", 0.6),
        ),
        Row(
            "chat",
            f"chat TTFT p50, {c} concurrent chats",
            "ms",
            gw["conc_ttft_p50_ms"],
            bare["conc_ttft_p50_ms"],
            Target("ratio_max", 3),
        ),
        Row(
            "chat",
            f"chat TTFT p99, {c} concurrent chats",
            "ms",
            gw["conc_ttft_p99_ms"],
            bare["conc_ttft_p99_ms"],
        ),
        Row(
            "chat",
            f"chat aggregate tokens/s, {c} concurrent chats",
            "tok/s",
            gw["conc_tokens_per_s"],
            bare["conc_tokens_per_s"],
            Target("ratio_min", 0.6),
        ),
        Row(
            "chat",
            f"server CPU during {c} concurrent chats",
            "cores",
            gw["conc_server_cores"],
            bare["conc_server_cores"],
        ),
    ]
    return rows, {"params": p.__dict__, "gateway": gw, "bare": bare}
