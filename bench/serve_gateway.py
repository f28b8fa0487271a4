"""The gateway as a benchmark target: `python -m bench.serve_gateway --port N --db PATH`.

Embedded-style settings: one `demo` agent answered by `echo` at zero delay, an admin
key, a fresh SQLite file. uvicorn picks uvloop and httptools when installed; the
gateway's own `server_for` turns permessage-deflate off.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import ADMIN_KEY, HOST, raise_nofile
from gateway.server import server_for
from gateway.settings import LOCAL_ORIGINS, Settings


def settings_for(port: int, db: Path) -> Settings:
    return Settings.from_dict(
        {
            "server": {
                "host": HOST,
                "port": port,
                "database_url": f"sqlite+aiosqlite:///{db}",
                "admin_key": ADMIN_KEY,
                "auto_migrate": True,
                "log_json": False,
            },
            "agents": {"demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL_ORIGINS}},
        },
        source="<bench>",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a fresh temp file)")
    args = parser.parse_args()
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        db = args.db or Path(tmp) / "gateway.db"
        server = server_for(settings_for(args.port, db), env={}, port=args.port, log_config=None)
        server.run()


if __name__ == "__main__":
    main()
