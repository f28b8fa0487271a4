"""Which real services this machine has; missing ones skip with a clear message,
or fail when GATEWAY_REQUIRE_SERVICES=1 (set by .ci/run)."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

PG_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Debian's Chromium as root in a closed network: no sandbox, nothing phoning home.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")


def required() -> bool:
    return os.environ.get("GATEWAY_REQUIRE_SERVICES", "") not in ("", "0", "false")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(what: str, available: bool, hint: str) -> None:
    if available:
        return
    message = f"{what} is not available here ({hint})"
    if required():
        pytest.fail(message + "; GATEWAY_REQUIRE_SERVICES=1 turns this skip into a failure")
    pytest.skip(message)


def need_postgres() -> None:
    need(
        "PostgreSQL",
        _reachable("127.0.0.1", 5432),
        "expected at 127.0.0.1:5432, user postgres, database test",
    )


def need_redis() -> None:
    need("Redis", _reachable("127.0.0.1", 6379), "expected at 127.0.0.1:6379")


def need_chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium") or ""
    need("Chromium", bool(path), "install Debian's `chromium` package: apt-get install chromium")
    return path


def redis_bus_url(name: str) -> str:
    """The test Redis as a bus, on a channel of its own (pub/sub ignores the db number)."""
    need_redis()
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}channel=switchboard-test:{name}:{os.getpid()}"


def need_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "")
    need("nginx", bool(path), "install Debian's `nginx-light` package (./run test does, as root)")
    return path
