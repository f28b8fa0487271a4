"""The gateway with a Twilio voice number: `python -m bench.serve_phone --port N --db PATH`.

The settings of `bench.serve_gateway` (an admin key, `auto_migrate`, a fresh SQLite
file, everything else default, `token_flush_ms` included) with one agent `phone`:
`answer = "echo"`, `echo_delay_ms = 0`, the Twilio number `PHONE_NUMBER` (SMS and voice)
and the local origins, so the same agent can be reached through ConversationRelay
(`POST /twilio/voice`, `WS /twilio/relay`) and through the chat WebSocket
(`/chat/ws?token=…`). The account SID and auth token are fake; they come from this
process's environment (`TWILIO_ENV`, set by the benchmark). Inbound calls make no
REST calls; `api_base_url` points at a closed local port all the same, so nothing
could ever reach api.twilio.com.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ADMIN_KEY, HOST, raise_nofile
from gateway.server import server_for
from gateway.settings import LOCAL_ORIGINS, Settings

AGENT = "phone"
PHONE_NUMBER = "+15550102001"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-twilio-auth-token"
TWILIO_ENV = {"BENCH_TWILIO_SID": ACCOUNT_SID, "BENCH_TWILIO_TOKEN": AUTH_TOKEN}


def settings_for(port: int, db: Path, *, token_flush_ms: float | None = None) -> Settings:
    server: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "database_url": f"sqlite+aiosqlite:///{db}",
        "admin_key": ADMIN_KEY,
        "auto_migrate": True,
        "log_json": False,
    }
    if token_flush_ms is not None:
        server["token_flush_ms"] = token_flush_ms
    agents: dict[str, Any] = {
        AGENT: {
            "answer": "echo",
            "echo_delay_ms": 0,
            "allowed_origins": LOCAL_ORIGINS,
            "twilio": [
                {
                    "number": PHONE_NUMBER,
                    "account_sid_env": "BENCH_TWILIO_SID",
                    "auth_token_env": "BENCH_TWILIO_TOKEN",
                    "api_base_url": f"http://{HOST}:9",
                }
            ],
        }
    }
    return Settings.from_dict({"server": server, "agents": agents}, source="<bench phone>")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a fresh temp file)")
    parser.add_argument("--token-flush-ms", type=float, help="server.token_flush_ms (default: the gateway's)")
    args = parser.parse_args()
    raise_nofile()
    env = {k: os.environ[k] for k in TWILIO_ENV if k in os.environ}
    with tempfile.TemporaryDirectory(prefix="bench-phone-") as tmp:
        db = args.db or Path(tmp) / "gateway.db"
        settings = settings_for(args.port, db, token_flush_ms=args.token_flush_ms)
        server = server_for(settings, env=env, port=args.port, log_config=None)
        server.run()


if __name__ == "__main__":
    main()
