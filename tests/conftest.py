"""Shared fixtures: real databases, a real uvicorn server on 127.0.0.1, clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.server import GatewayServer, Services, server_for
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from tests.services import PG_URL, need_postgres

ADMIN = "sk_test_admin_key"


async def reset_postgres() -> None:
    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both real databases, one test run each."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    need_postgres()
    await reset_postgres()
    return PG_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(database_url: str, **over: Any) -> Settings:
    server = {
        "database_url": database_url,
        "admin_key": ADMIN,
        "auto_migrate": True,
        "log_json": False,
        "token_flush_ms": 0,
        "host": "127.0.0.1",
        "port": 0,
        # The fakes (LLM, webhook, tools) listen on 127.0.0.1: say so explicitly.
        "allow_private_urls": True,
        **over.pop("server", {}),
    }
    agents = over.pop(
        "agents",
        {
            "demo": {
                "answer": "echo",
                "echo_delay_ms": 0,
                "allowed_origins": ["http://localhost:*", "http://127.0.0.1:*"],
            }
        },
    )
    return Settings.from_dict({"server": server, "agents": agents, **over})


@dataclass
class Running:
    url: str
    ws_url: str
    runtime: Services
    server: GatewayServer
    task: asyncio.Task[None]

    def client(self, **kw: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {ADMIN}", **kw.pop("headers", {})}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kw)

    async def stop(self) -> None:
        self.server.stop()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(20):
                await self.task


@contextlib.asynccontextmanager
async def run_gateway(
    settings: Settings, env: dict[str, str] | None = None, port: int | None = None
) -> AsyncIterator[Running]:
    """A real uvicorn server on 127.0.0.1 (a fixed `port` lets a test restart it in place)."""
    port = port or free_port()
    server = server_for(settings, env=env or {}, port=port)
    server.config.log_config = None
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited during startup")
            await asyncio.sleep(0.01)
    running = Running(
        url=f"http://127.0.0.1:{port}",
        ws_url=f"ws://127.0.0.1:{port}",
        runtime=server.runtime,
        server=server,
        task=task,
    )
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def gateway(sqlite_url: str) -> AsyncIterator[Running]:
    async with run_gateway(make_settings(sqlite_url)) as running:
        yield running


@pytest.fixture
async def gateway_any_db(db_url: str) -> AsyncIterator[Running]:
    async with run_gateway(make_settings(db_url)) as running:
        yield running


async def mint(g: Running, agent: str = "demo", channel: str = "chat", **body: Any) -> str:
    async with g.client() as c:
        r = await c.post("/v1/tokens", json={"agent": agent, "channel": channel, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


class SseReader:
    """Reads SSE frames from a streaming httpx response (a real socket, no buffering)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        frame: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if frame:
                        if "data" in frame:
                            frame["json"] = json.loads(frame["data"])
                        return frame
                    continue
                if line.startswith(":"):
                    frame.setdefault("comments", []).append(line[1:].strip())
                    continue
                key, _, value = line.partition(":")
                frame[key] = value[1:] if value.startswith(" ") else value
        raise EOFError("stream ended")

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        """The next frame that is an event (skips comment-only frames)."""
        while True:
            frame = await self.next(timeout)
            if "event" in frame or "data" in frame:
                return frame


def session_record(**over: Any) -> SessionRecord:
    """A SessionRecord for unit tests of channel rules (no database)."""
    fields: dict[str, Any] = {
        "id": "x-1",
        "agent_id": "a",
        "channel": "whatsapp",
        "contact": None,
        "direction": "inbound",
        "status": "active",
        "paused": False,
        "meta": {},
        "context": {},
        "prompt_vars": {},
        "prompt": None,
        "started_at": 0,
        "last_message_at": 0,
        "last_inbound_at": None,
        "ended_at": None,
        "end_reason": None,
        "window_closed_at": None,
        "endpoint": None,
    }
    return SessionRecord(**{**fields, **over})
