"""Shared by the security and tenant tests: chat through a real socket, read a feed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import websockets

from tests.conftest import ADMIN, Running, SseReader


async def chat(g: Running, token: str, text: str) -> str:
    """One chat turn through the browser socket; the session id."""
    async with websockets.connect(f"{g.ws_url}/chat/ws?token={token}") as ws:
        sid = json.loads(await ws.recv())["sessionId"]
        await ws.send(json.dumps({"event": "message", "text": text}))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["event"] != "chat.done":
                pass
    return str(sid)


async def mint_with(g: Running, key: str, agent: str, channel: str = "chat", **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
        return await c.post(
            "/v1/tokens",
            json={"agent": agent, "channel": channel, **body},
            headers={"authorization": f"Bearer {key}"},
        )


async def replay(g: Running, path: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every persisted event a feed replays from the start (up to `stream.caughtUp`)."""
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
        async with c.stream("GET", path, headers={"last-event-id": "0", **(headers or {})}) as r:
            if r.status_code != 200:
                await r.aread()
                return [{"status": r.status_code, "body": r.json()}]
            feed = SseReader(r)
            out = []
            while True:
                frame = await feed.next_event()
                if frame["event"] == "stream.caughtUp":
                    return out
                out.append(frame["json"])


def bearer(key: str = ADMIN) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
