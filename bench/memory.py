"""Idle memory per connection: server RSS before and after opening N idle connections.

A fresh server process per (server, connection kind), so that memory freed by one
measurement cannot be reused by the next. Before the baseline reading, a few
connections are opened and closed (warm-up: imports, caches, the first pages of the
SQLite file) and, on the gateway, all the tokens needed are minted. A connection
counts as open when the server has set it up: `chat.started` on a chat WebSocket,
the first `: connected` comment on an SSE feed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import SseClient, WsClient
from bench.common import ADMIN_KEY, ServerProc, gather_limited, mint_tokens, running
from bench.report import Row, Target

WARMUP = 20


@dataclass
class MemoryParams:
    connections: int = 500
    settle_s: float = 1.0  # pause before each RSS reading


async def _open_ws(server: ServerProc, token: str | None) -> WsClient:
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(payload: bytes, _p: float, _w: float) -> None:
        if not started.done() and json.loads(payload).get("event") == "chat.started":
            started.set_result(None)

    path = "/chat/ws" if token is None else f"/chat/ws?token={token}"
    ws = await WsClient.connect(server.port, path, on_message)
    async with asyncio.timeout(30):
        await started
    return ws


async def _open_sse(server: ServerProc) -> SseClient:
    connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_frame(frame: bytes, _t: float) -> None:
        if not connected.done() and frame.startswith(b":"):
            connected.set_result(None)

    if server.kind == "gateway":
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        client = await SseClient.connect(server.port, "/v1/events", on_frame, auth)
    else:
        client = await SseClient.connect(server.port, "/events", on_frame)
    async with asyncio.timeout(30):
        await connected
    return client


async def measure(kind: str, conn_kind: str, n: int, settle_s: float, log_dir: Path) -> dict[str, Any]:
    async with running(kind, log_dir) as server:
        tokens: list[str | None] = [None] * (n + WARMUP)
        if kind == "gateway" and conn_kind == "ws":
            tokens = list(await mint_tokens(server.url, n + WARMUP))

        def opener(token: str | None) -> Any:
            return _open_ws(server, token) if conn_kind == "ws" else _open_sse(server)

        warm = await gather_limited([opener(tokens.pop()) for _ in range(WARMUP)], 20)
        for c in warm:
            if isinstance(c, BaseException):
                raise c
            c.close()
        await asyncio.sleep(settle_s)
        before = server.rss_kb()
        conns = await gather_limited([opener(tokens.pop()) for _ in range(n)], 50)
        errors = [c for c in conns if isinstance(c, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {n} {conn_kind} connections failed: {errors[0]!r}")
        await asyncio.sleep(settle_s)
        after = server.rss_kb()
        still_open = sum(1 for c in conns if not c.closed.done())
        for c in conns:
            c.close()
    return {
        "rss_before_kb": before,
        "rss_after_kb": after,
        "connections": n,
        "still_open": still_open,
        "kb_per_connection": (after - before) / n,
        "background_cores": server.background_cores,
    }


async def run(p: MemoryParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    n = p.connections
    out: dict[str, Any] = {"params": p.__dict__}
    for conn_kind in ("ws", "sse"):
        for kind in ("bare", "gateway"):
            out[f"{kind}_{conn_kind}"] = await measure(kind, conn_kind, n, p.settle_s, log_dir)
    kb = {k: v["kb_per_connection"] for k, v in out.items() if k != "params"}
    rows = [
        Row("memory", f"RSS per idle chat WebSocket ({n} open)", "KB", kb["gateway_ws"], kb["bare_ws"]),
        Row(
            "memory",
            f"RSS per idle SSE subscriber ({n} open)",
            "KB",
            kb["gateway_sse"],
            kb["bare_sse"],
            Target("abs_max", 70),
        ),
    ]
    return rows, out
