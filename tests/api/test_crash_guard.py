"""The last resort: a bug in a route answers a JSON 500 and keeps the keep-alive connection."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.http import CrashGuard, on_crash
from tests.conftest import free_port


async def _boom(_request: Request) -> JSONResponse:
    raise RuntimeError("a bug")


async def _fine(_request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _app() -> Starlette:
    app = Starlette(
        routes=[Route("/boom", _boom), Route("/fine", _fine)],
        exception_handlers={Exception: on_crash},  # as the gateway: Starlette's own last resort too
    )
    app.add_middleware(CrashGuard)
    return app


async def test_a_bug_is_a_json_500_on_a_connection_that_stays_open(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as c:
            addresses = set()
            for path in ("/fine", "/boom", "/fine", "/boom", "/fine"):
                r = await c.get(path)
                addresses.add(r.extensions["network_stream"].get_extra_info("client_addr"))
                if path == "/boom":
                    assert r.status_code == 500
                    assert r.json() == {
                        "error": {"code": "internal", "message": "internal error (a bug: it has been logged)"}
                    }
                else:
                    assert r.status_code == 200
        assert len(addresses) == 1, "the 500 closed the connection"
        assert "unhandled error on GET /boom" in caplog.text
    finally:
        server.should_exit = True
        await task
