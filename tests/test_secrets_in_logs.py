"""No secret reaches a log line or a message: one whole gateway run, every output captured.

The run: `gateway migrate` and `gateway check` and `gateway serve` with a database
password in the URL, an admin key, an API key, provider credentials in the
environment, uvicorn's access log on; then requests with secrets where they should
not be (tokens and keys in query strings of HTTP, SSE and WebSocket URLs, the WhatsApp
verify token) and where they should (headers). Afterwards every byte the processes
printed is searched for every secret the run used.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from gateway.redact import Redactor, redact_url
from tests.conftest import free_port, reset_postgres
from tests.services import PG_URL, need_postgres

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = [sys.executable, "-m", "gateway.cli"]


def test_redactor_rules() -> None:
    r = Redactor(["provider-credential-123"])
    assert (
        redact_url("postgresql+asyncpg://gw:pa%40ss@db:5432/gw") == "postgresql+asyncpg://gw:***@db:5432/gw"
    )
    assert redact_url("/chat/ws?token=tk_abcdefgh123&x=1") == "/chat/ws?token=***&x=1"
    assert redact_url("/v1/events?agents=a&api_key=whatever") == "/v1/events?agents=a&api_key=***"
    assert redact_url("/whatsapp/webhook?hub.mode=subscribe&hub.verify_token=v&hub.challenge=7") == (
        "/whatsapp/webhook?hub.mode=subscribe&hub.verify_token=***&hub.challenge=7"
    )
    assert r.text("key sk_live_0123456789abcdef leaked") == "key sk_*** leaked"
    assert r.text("Authorization: Bearer abcdefgh12345") == "Authorization: Bearer ***"
    assert r.text("got provider-credential-123 back") == "got *** back"
    assert r.text("/v1/sessions?limit=5&cursor=abc") == "/v1/sessions?limit=5&cursor=abc"


def _spawn(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _run_raw(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    return f"$ {args[3:]} -> {r.returncode}\n{r.stdout}{r.stderr}"


@pytest.mark.timeout(180)
async def test_a_whole_gateway_run_never_logs_a_secret(tmp_path: Path) -> None:
    need_postgres()
    await reset_postgres()
    password = "Pw-" + secrets.token_hex(8)
    # Trust authentication on the test server ignores the password, so the run works
    # with one in the URL exactly as a production URL carries it.
    db_url = PG_URL.replace("postgresql+asyncpg://postgres@", f"postgres://postgres:{password}@", 1)
    assert password in db_url
    admin = "sk_admin_" + secrets.token_hex(12)
    wa_token, wa_secret, verify = (f"{n}-{secrets.token_hex(10)}" for n in ("EAAG", "appsecret", "verify"))
    twilio_token = secrets.token_hex(16)
    llm_key = "sk-proj-" + secrets.token_hex(12)
    url_key = "azure" + secrets.token_hex(12)  # a key written into an endpoint URL
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[server]
database_url = "{db_url}"
access_log = true
log_json = true

[agents.support]
answer = "echo"
echo_delay_ms = 0
allowed_origins = ["http://127.0.0.1:*"]

[[agents.support.whatsapp]]
phone_number_id = "1234567"
access_token_env = "WA_TOKEN"
app_secret_env = "WA_APP_SECRET"
verify_token = "{verify}"

[[agents.support.twilio]]
number = "+15550001111"

[agents.writer]
answer = "llm"
allowed_origins = ["http://127.0.0.1:*"]
[agents.writer.llm]
base_url = "http://127.0.0.1:9/v1?api-key={url_key}"
model = "m"
api_key_env = "WRITER_LLM_KEY"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "GATEWAY_ADMIN_KEY": admin,
        "WA_TOKEN": wa_token,
        "WA_APP_SECRET": wa_secret,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "WRITER_LLM_KEY": llm_key,
    }
    transcript = [
        _run([*GATEWAY, "--config", str(config), "migrate"], env, tmp_path),
        _run([*GATEWAY, "--config", str(config), "check"], env, tmp_path),
    ]
    created = _run_raw([*GATEWAY, "--config", str(config), "keys", "create", "dashboard"], env, tmp_path)
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip()  # shown once, on stdout, by design; the rest is searched
    transcript.append(created.stderr)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = _spawn([*GATEWAY, "serve", "--config", str(config), "--port", str(port)], env, tmp_path, log)
    tokens: list[str] = []
    received: list[str] = []  # what clients were sent: messages count as much as logs
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            async with asyncio.timeout(30):
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        if (await c.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            auth = {"authorization": f"Bearer {api_key}"}
            # Secrets in query strings, where clients wrongly put them.
            await c.get(f"/v1/sessions?api_key={api_key}")
            await c.get(f"/v1/sessions?key={admin}", headers=auth)
            hub = f"/whatsapp/webhook?hub.mode=subscribe&hub.verify_token={verify}&hub.challenge=42"
            assert (await c.get(hub)).text == "42"
            # A browser chat (token in the WebSocket URL) and a feed (token in the SSE URL).
            minted = await c.post("/v1/tokens", json={"agent": "support"}, headers={"origin": base})
            tokens.append(minted.json()["token"])
            async with websockets.connect(f"ws://127.0.0.1:{port}/chat/ws?token={tokens[-1]}") as ws:
                await ws.recv()
                await ws.send(json.dumps({"event": "message", "text": "hello"}))
                while json.loads(await ws.recv())["event"] != "chat.done":
                    pass
            stream = await c.post("/v1/tokens", json={"agent": "support", "channel": "stream"}, headers=auth)
            tokens.append(stream.json()["token"])
            async with c.stream("GET", f"/v1/events?token={tokens[-1]}") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith(": connected") or line.startswith("id:"):
                        break
            # Rejected ones are logged too: a used token, a key in an agent socket's URL.
            for url in (f"/chat/ws?token={tokens[0]}", f"/v1/agents/ws?key={api_key}"):
                try:
                    async with websockets.connect(f"ws://127.0.0.1:{port}{url}") as ws:
                        await asyncio.wait_for(ws.recv(), 2)
                except (websockets.exceptions.WebSocketException, TimeoutError):
                    pass
            # An LLM agent whose endpoint is down: the failure is logged, the key is not.
            minted = await c.post("/v1/tokens", json={"agent": "writer"}, headers={"origin": base})
            tokens.append(minted.json()["token"])
            async with websockets.connect(f"ws://127.0.0.1:{port}/chat/ws?token={tokens[-1]}") as ws:
                await ws.recv()
                await ws.send(json.dumps({"event": "message", "text": "hello"}))
                async with asyncio.timeout(15):
                    while True:
                        frame = str(await ws.recv())
                        received.append(frame)
                        if json.loads(frame)["event"] in ("chat.error", "error", "chat.done"):
                            break
            # ... and what every client can read afterwards: the stored events.
            async with c.stream("GET", "/v1/events", headers={**auth, "last-event-id": "0"}) as r:
                async for line in r.aiter_lines():
                    received.append(line)
                    if line.startswith("event: stream.caughtUp"):
                        break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    transcript.append(log.read_text())
    everything = "\n".join([*transcript, *received])

    used_secrets = {
        "database password": password,
        "admin key": admin,
        "API key": api_key,
        "WhatsApp access token": wa_token,
        "WhatsApp app secret": wa_secret,
        "WhatsApp verify token": verify,
        "Twilio auth token": twilio_token,
        "LLM API key": llm_key,
        "key in the LLM's URL": url_key,
        **{f"browser token {i}": t for i, t in enumerate(tokens)},
    }
    leaked = {name: value for name, value in used_secrets.items() if value in everything}
    assert not leaked, f"{sorted(leaked)} found in:\n{everything}"
    # The lines were written (with the secrets masked), not merely missing.
    messages = "\n".join(
        json.loads(line)["msg"] for line in transcript[-1].splitlines() if line.startswith("{")
    )
    assert '"GET /v1/sessions?api_key=*** HTTP/1.1" 401' in messages
    assert "hub.verify_token=***&hub.challenge=42 HTTP/1.1" in messages
    assert '"WebSocket /chat/ws?token=***" [accepted]' in messages
    assert '"GET /v1/events?token=*** HTTP/1.1" 200' in messages
    assert '"WebSocket /v1/agents/ws?key=***"' in messages
    assert any("api-key=***" in frame for frame in received)  # the failed turn's reason, masked
    assert "database: postgresql+asyncpg://postgres:***@127.0.0.1:5432/" in everything
    assert "database at head: postgresql+asyncpg://postgres:***@127.0.0.1:5432/" in everything
