"""Operations: health, readiness, metrics, the OpenAPI document, the demo page."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.api.openapi import openapi_document
from gateway.runtime import Runtime

STATIC = Path(__file__).resolve().parent.parent / "static"


class OpsRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/", self.demo, methods=["GET"]),
            Route("/console", self.console, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]

    async def healthz(self, _request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        for name, probe in (("database", self.rt.store.ping), ("bus", self.rt.bus.ping)):
            try:
                async with asyncio.timeout(3):
                    await probe()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {exc.__class__.__name__}"
        ok = all(v == "ok" for v in checks.values()) and not self.rt.stopping.is_set()
        if self.rt.stopping.is_set():
            checks["server"] = "shutting down"
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
        )

    async def metrics(self, _request: Request) -> Response:
        return Response(self.rt.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, _request: Request) -> JSONResponse:
        return JSONResponse(openapi_document())

    async def console(self, _request: Request) -> FileResponse:
        return FileResponse(STATIC / "console.html", headers={"cache-control": "no-cache"})

    async def demo(self, _request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})
