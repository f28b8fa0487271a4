"""N real `gateway serve` processes on one PostgreSQL database and one Redis.

    async with Cluster(tmp_path, n=3, agents=...) as cluster:
        a, b, c = cluster.nodes
        a.url, a.ws_url          # each on its own port of 127.0.0.1
        await cluster.leader()   # the node whose /readyz says it leads
        a.kill()                 # SIGKILL; `await a.start()` brings it back on the same port

The database is the tests' PostgreSQL (`GATEWAY_TEST_PG_URL`, reset first); the bus
is the tests' Redis on a channel of its own. Both missing: the test skips with a
message, or fails under GATEWAY_REQUIRE_SERVICES=1 (tests/services.py). Each
process logs to `gateway-<port>.log` in the test's directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.conftest import ADMIN, free_port, reset_postgres
from tests.services import PG_URL, need_postgres, redis_bus_url

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, server: dict[str, Any], agents: dict[str, dict[str, Any]]) -> Path:
    lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in server.items())]
    for agent, body in agents.items():
        lines.append(f"\n[agents.{agent}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in body.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class Endpoint:
    """Where clients talk to: one gateway, or a proxy in front of several."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws_url = url.replace("http://", "ws://", 1)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, **kw
        )


class Node(Endpoint):
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log = config.parent / f"gateway-{self.port}.log"
        self._env = env
        self.p: subprocess.Popen[bytes] | None = None

    def spawn(self, *extra: str) -> None:
        with open(self.log, "ab") as log:
            self.p = subprocess.Popen(
                [*GATEWAY, "--config", str(self.config), "serve", "--port", str(self.port), *extra],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, *extra: str) -> None:
        self.spawn(*extra)
        await self.ready()

    async def ready(self, timeout: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(timeout), httpx.AsyncClient() as c:
            while True:
                if self.p is None or self.p.poll() is not None:
                    raise AssertionError(f"gateway exited: {self.log.read_text()[-3000:]}")
                try:
                    r = await c.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        body: dict[str, Any] = r.json()
                        return body
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no unlock; what the others see when a host dies."""
        if self.alive:
            assert self.p is not None
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, the graceful way (a rolling restart)."""
        if self.p is None:
            return 0
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        return int(self.p.returncode)


class Cluster:
    def __init__(
        self,
        tmp: Path,
        *,
        n: int = 3,
        agents: dict[str, dict[str, Any]] | None = None,
        server: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.n = n
        self.agents = agents or {
            "demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]}
        }
        self.server = server or {}
        self.extra_env = env or {}
        self.nodes: list[Node] = []

    async def __aenter__(self) -> Cluster:
        need_postgres()
        bus = redis_bus_url(f"cluster-{uuid.uuid4().hex}")
        await reset_postgres()
        server = {
            "database_url": PG_URL,
            "bus_url": bus,
            "bus_catch_up_seconds": 0.5,
            "leader_check_seconds": 0.5,
            "log_json": True,
            "shutdown_grace_seconds": 5,
            "allow_private_urls": True,
            **self.server,
        }
        config = write_config(self.tmp / "gateway.toml", server, self.agents)
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN, "PYTHONUNBUFFERED": "1", **self.extra_env}
        env.pop("GATEWAY_CONFIG", None)
        self.nodes = [Node(config, env) for _ in range(self.n)]
        try:
            await self.nodes[0].start("--migrate")  # one migrates; the others find the schema
            await asyncio.gather(*(node.start() for node in self.nodes[1:]))
        except BaseException:
            self._kill_all()
            raise
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._kill_all()

    def _kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    async def leader(self, timeout: float = 15, among: list[Node] | None = None) -> Node:
        """The live node whose /readyz says it runs the timers and sweepers (exactly one)."""
        nodes = [n for n in (among or self.nodes) if n.alive]
        async with asyncio.timeout(timeout):
            while True:
                leaders = [n for n in nodes if (await n.ready()).get("leader")]
                assert len(leaders) <= 1, [n.port for n in leaders]
                if leaders:
                    return leaders[0]
                await asyncio.sleep(0.05)
