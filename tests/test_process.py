"""The real `gateway` process: crash recovery (SIGKILL mid-turn), graceful shutdown, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import ADMIN, SseReader, free_port

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def write_config(tmp: Path, delay_ms: int) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[server]
database_url = "sqlite+aiosqlite:///{tmp / "gw.db"}"
shutdown_grace_seconds = 8
log_json = true

[agents.demo]
answer = "echo"
echo_delay_ms = {delay_ms}
allowed_origins = ["http://127.0.0.1:*"]
"""
    )
    return path


class Proc:
    def __init__(self, config: Path, port: int, *extra: str) -> None:
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN, "PYTHONUNBUFFERED": "1"}
        env.pop("GATEWAY_CONFIG", None)
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / f"gateway-{port}.log"
        self.p = subprocess.Popen(
            [*GATEWAY, "--config", str(config), "serve", "--port", str(port), *extra],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )

    async def ready(self) -> None:
        async with asyncio.timeout(30), httpx.AsyncClient() as c:
            while True:
                if self.p.poll() is not None:
                    raise AssertionError(f"gateway exited: {self.log.read_text()[-2000:]}")
                try:
                    if (await c.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    async def wait(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            while self.p.poll() is None:
                await asyncio.sleep(0.05)
        return int(self.p.returncode)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


async def chat_token(url: str, **body: Any) -> str:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as c:
        r = await c.post("/v1/tokens", json={"agent": "demo", **body})
        return str(r.json()["token"])


async def test_killed_mid_turn_the_turn_runs_again_after_restart(tmp_path: Path, procs: list[Proc]) -> None:
    config = write_config(tmp_path, delay_ms=150)
    port = free_port()
    first = Proc(config, port, "--migrate")
    procs.append(first)
    await first.ready()
    text = " ".join(f"w{i}" for i in range(20))
    ws_url = f"ws://127.0.0.1:{port}/chat/ws?token={await chat_token(first.url)}"
    async with websockets.connect(ws_url) as ws:
        sid = json.loads(await ws.recv())["sessionId"]
        await ws.send(json.dumps({"event": "message", "text": text}))
        for _ in range(3):
            assert json.loads(await ws.recv())["event"] == "chat.token"
        first.p.send_signal(signal.SIGKILL)  # no shutdown of any kind
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert await first.wait() == -signal.SIGKILL

    second = Proc(config, port)
    procs.append(second)
    await second.ready()
    async with httpx.AsyncClient(base_url=second.url, headers={"authorization": f"Bearer {ADMIN}"}) as c:
        async with asyncio.timeout(20):
            while True:
                record = (await c.get(f"/v1/sessions/{sid}")).json()
                if any(m["role"] == "assistant" for m in record["messages"]):
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nothing more must arrive
        record = (await c.get(f"/v1/sessions/{sid}")).json()
        async with c.stream("GET", "/v1/events", headers={"last-event-id": "0"}) as r:
            feed, events = SseReader(r), []
            while (f := await feed.next_event())["event"] != "stream.caughtUp":
                events.append(f["json"])
    # The half-streamed reply was replaced by the complete one, exactly once.
    assert [(m["role"], m["text"]) for m in record["messages"]] == [("user", text), ("assistant", text)]
    assert [e["event"] for e in events if e.get("sessionId") == sid] == [
        "session.started",
        "user.message",
        "bot.message",
    ]
    # The browser reconnects and finds the reply in its history.
    ws_url = f"ws://127.0.0.1:{port}/chat/ws?token={await chat_token(second.url, sessionId=sid)}"
    async with websockets.connect(ws_url) as ws:
        started = json.loads(await ws.recv())
        assert [m["text"] for m in started["history"]] == [text, text]
    second.p.send_signal(signal.SIGTERM)
    assert await second.wait() == 0


async def test_sigterm_closes_clients_cleanly_and_finishes_the_running_turn(
    tmp_path: Path, procs: list[Proc]
) -> None:
    config = write_config(tmp_path, delay_ms=100)
    port = free_port()
    proc = Proc(config, port, "--migrate")
    procs.append(proc)
    await proc.ready()
    text = " ".join(f"t{i}" for i in range(15))  # ~1.5 s of streaming
    async with httpx.AsyncClient(
        base_url=proc.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30
    ) as c:
        async with c.stream("GET", "/v1/events") as feed_response:
            feed = SseReader(feed_response)
            await feed.next()
            ws_url = f"ws://127.0.0.1:{port}/chat/ws?token={await chat_token(proc.url)}"
            async with websockets.connect(ws_url) as ws:
                sid = json.loads(await ws.recv())["sessionId"]
                await ws.send(json.dumps({"event": "message", "text": text}))
                assert json.loads(await ws.recv())["event"] == "chat.token"
                proc.p.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(10):
                        while True:
                            await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            with pytest.raises(EOFError):  # the feed ends cleanly, not with a reset
                while True:
                    await feed.next(timeout=10)
    assert await proc.wait() == 0
    # The in-flight turn finished during the grace period and was stored.
    restarted = Proc(config, port)
    procs.append(restarted)
    await restarted.ready()
    async with httpx.AsyncClient(base_url=restarted.url, headers={"authorization": f"Bearer {ADMIN}"}) as c:
        record = (await c.get(f"/v1/sessions/{sid}")).json()
    assert [(m["role"], m["text"]) for m in record["messages"]] == [("user", text), ("assistant", text)]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_cli_serve_refuses_an_old_schema_and_migrate_fixes_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, delay_ms=0)
    # An older gateway's schema (a new, empty database would be set up on start).
    assert run_cli("--config", str(config), "migrate", "0002").returncode == 0
    r = run_cli("--config", str(config), "serve", "--port", str(free_port()))
    assert r.returncode == 2 and "the database schema is at revision 0002" in r.stderr
    assert "run `gateway migrate`" in r.stderr
    r = run_cli("--config", str(config), "migrate")
    assert r.returncode == 0, r.stderr
    r = run_cli("--config", str(config), "keys", "create", "ops")
    assert r.returncode == 0 and r.stdout.startswith("sk_")
    key = r.stdout.strip()
    listed = run_cli("--config", str(config), "keys", "list")
    assert key[:10] in listed.stdout and key not in listed.stdout
    token = run_cli("--config", str(config), "token", "demo")
    assert token.returncode == 0 and token.stdout.startswith("tk_")
    bad = run_cli("--config", str(config), "token", "ghost")
    assert bad.returncode == 1 and "unknown agent" in bad.stderr
    key_id = listed.stdout.split("\t")[0]
    assert run_cli("--config", str(config), "keys", "revoke", key_id).returncode == 0
    assert "revoked" in run_cli("--config", str(config), "keys", "list").stdout
    exported = run_cli("--config", str(config), "export")
    assert exported.returncode == 0 and exported.stdout == ""


def test_cli_reports_bad_config_by_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[agents.support]\nanswer = 'llm'\n")
    r = run_cli("--config", str(path), "migrate")
    assert r.returncode == 2
    assert str(path) in r.stderr and "agents.support" in r.stderr and "llm" in r.stderr


def test_embedded_default_creates_its_sqlite_file_in_the_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    r = subprocess.run(
        [*GATEWAY, "token", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gateway.db").exists()


async def test_replies_queued_when_killed_are_delivered_exactly_once_after_restart(
    tmp_path: Path, procs: list[Proc]
) -> None:
    from channels.whatsapp.signature import sign
    from tests.fakes.graph_server import FakeGraph
    from tests.whatsapp.test_channel import PNID, text_webhook

    async with FakeGraph(token="tok") as graph:
        graph.fail_next(100_000, 500, 131000, "Something went wrong", on="messages")  # Meta is down
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[server]
database_url = "sqlite+aiosqlite:///{tmp_path / "gw.db"}"
outbox_poll_seconds = 0.05
outbox_retry_base_seconds = 2
outbox_max_attempts = 1000

[agents.support]
answer = "echo"
echo_delay_ms = 0

[[agents.support.whatsapp]]
phone_number_id = "{PNID}"
access_token_env = "WA_TOKEN"
app_secret_env = "WA_SECRET"
graph_base_url = "{graph.base_url}"
graph_version = "{graph.version}"
""")
        os.environ["WA_TOKEN"], os.environ["WA_SECRET"] = "tok", "sec"
        try:
            port = free_port()
            first = Proc(config, port, "--migrate")
            procs.append(first)
            await first.ready()
            async with httpx.AsyncClient(base_url=first.url) as c:
                for i in range(5):
                    body = text_webhook(f"wamid.K{i}", f"reply number {i}", sender=f"3460000000{i}")
                    r = await c.post(
                        "/whatsapp/webhook",
                        content=body,
                        headers={
                            "content-type": "application/json",
                            "x-hub-signature-256": sign(body, "sec"),
                        },
                    )
                    assert r.status_code == 200
            async with asyncio.timeout(15):  # every reply stored and queued, Meta still failing
                while (
                    len(
                        {
                            r.json().get("to")
                            for r in graph.requests
                            if "messages" in r.path and r.json().get("type") == "text"
                        }
                    )
                    < 5
                ):
                    await asyncio.sleep(0.05)
            # Kill between attempts (each part is backing off for ~2 s), not mid-call: a part
            # killed mid-call is `uncertain` and deliberately never resent blindly.
            await asyncio.sleep(0.3)
            first.p.send_signal(signal.SIGKILL)
            await first.wait()
            graph._failures.clear()
            second = Proc(config, port)
            procs.append(second)
            await second.ready()
            async with asyncio.timeout(15):
                while len(graph.sent) < 5:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # nothing more may arrive
        finally:
            os.environ.pop("WA_TOKEN", None)
            os.environ.pop("WA_SECRET", None)
    keys = [m["biz_opaque_callback_data"] for m in graph.sent]
    assert len(graph.sent) == 5 and len(set(keys)) == 5
    assert sorted(m["text"]["body"] for m in graph.sent) == [f"reply number {i}" for i in range(5)]


def test_export_writes_jsonl_with_a_progress_bar(tmp_path: Path) -> None:
    config = write_config(tmp_path, delay_ms=0)
    assert run_cli("--config", str(config), "migrate").returncode == 0

    async def seed() -> None:
        from gateway.settings import load_settings
        from gateway.store.db import create_engine
        from gateway.store.sql import Store
        from gateway.types import Channel

        store = Store(create_engine(load_settings(config, env={}).server.database_url))
        await store.sync_agents({"demo": {"answer": "echo"}})
        for i in range(3):
            from gateway.events import ContactRef

            await store.ingest_message(
                agent_id="demo",
                channel=Channel.API,
                text=f"hello {i}",
                contact=ContactRef(channel=Channel.API, address=f"c{i}"),
            )
        await store.close()

    asyncio.run(seed())
    out = tmp_path / "export.jsonl"
    r = run_cli("--config", str(config), "export", "-o", str(out))
    assert r.returncode == 0 and "3/3 sessions" in r.stderr and "[####" in r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(rec["messages"][0]["role"] == "user" for rec in lines)
