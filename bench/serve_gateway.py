"""The gateway as a benchmark target: `python -m bench.serve_gateway --port N --db PATH [options]`.

Embedded-style settings: one `demo` agent answered by `echo` at zero delay, an admin
key, a fresh SQLite file (or `--database-url`, e.g. a scratch PostgreSQL database),
everything else default (`token_flush_ms` included, unless
`--token-flush-ms` is given). Optional extra agents:

- `--llm-url URL`: agent `llm`, `answer = "llm"`, `llm = {base_url = URL/v1, model = "m"}`
  (the fake upstream of `bench.serve_fake_llm`).
- `--graph-url URL`: agent `wa`, echo at zero delay, answering on the WhatsApp number
  `bench.common.WA_PNID` whose Graph API is URL (`bench.serve_fake_graph`);
  `WA_TOKEN` and `WA_APP_SECRET` come from this process's environment.

uvicorn picks uvloop and httptools when installed; the gateway's own `server_for`
turns permessage-deflate off.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ADMIN_KEY, HOST, WA_PNID, raise_nofile
from gateway.server import server_for
from gateway.settings import LOCAL_ORIGINS, Settings


def settings_for(
    port: int,
    db: Path,
    *,
    llm_url: str | None = None,
    graph_url: str | None = None,
    token_flush_ms: float | None = None,
    tenants: int = 0,
    database_url: str | None = None,
) -> Settings:
    server: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "database_url": database_url or f"sqlite+aiosqlite:///{db}",
        "admin_key": ADMIN_KEY,
        "auto_migrate": True,
        "log_json": False,
    }
    if token_flush_ms is not None:
        server["token_flush_ms"] = token_flush_ms
    agents: dict[str, Any] = {
        "demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL_ORIGINS}
    }
    if llm_url:
        agents["llm"] = {
            "answer": "llm",
            "llm": {"base_url": llm_url.rstrip("/") + "/v1", "model": "m"},
            "allowed_origins": LOCAL_ORIGINS,
        }
    if graph_url:
        agents["wa"] = {
            "answer": "echo",
            "echo_delay_ms": 0,
            "whatsapp": [
                {
                    "phone_number_id": WA_PNID,
                    "access_token_env": "WA_TOKEN",
                    "app_secret_env": "WA_APP_SECRET",
                    "verify_token": "v",
                    "graph_base_url": graph_url,
                    "graph_version": "v21.0",
                }
            ],
        }
    keys: list[dict[str, Any]] = []
    for i in range(tenants):  # sse-tenants: agent t<i> of tenant t<i>, and a key of that tenant
        agents[f"t{i}"] = {"answer": "echo", "echo_delay_ms": 0, "tenant": f"t{i}"}
        digest = hashlib.sha256(tenant_key(i).encode()).hexdigest()
        keys.append({"name": f"t{i}", "sha256": digest, "tenant": f"t{i}"})
    return Settings.from_dict({"server": server, "agents": agents, "api_keys": keys}, source="<bench>")


def tenant_key(i: int) -> str:
    return f"sk_bench_tenant_{i}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a fresh temp file)")
    parser.add_argument("--llm-url", help="add agent `llm` streaming from this OpenAI-compatible server")
    parser.add_argument("--graph-url", help="add agent `wa` with a WhatsApp number on this Graph API")
    parser.add_argument("--token-flush-ms", type=float, help="server.token_flush_ms (default: the gateway's)")
    parser.add_argument("--tenants", type=int, default=0, help="add agents t0…tN-1, one tenant and key each")
    parser.add_argument("--database-url", help="store in this database instead of --db (e.g. PostgreSQL)")
    args = parser.parse_args()
    raise_nofile()
    env = {k: os.environ[k] for k in ("WA_TOKEN", "WA_APP_SECRET") if k in os.environ}
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        db = args.db or Path(tmp) / "gateway.db"
        settings = settings_for(
            args.port,
            db,
            llm_url=args.llm_url,
            graph_url=args.graph_url,
            token_flush_ms=args.token_flush_ms,
            tenants=args.tenants,
            database_url=args.database_url,
        )
        server = server_for(settings, env=env, port=args.port, log_config=None)
        server.run()


if __name__ == "__main__":
    main()
