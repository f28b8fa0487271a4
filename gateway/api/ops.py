"""Operations: health, readiness, metrics, the OpenAPI document, the demo page."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.api.openapi import openapi_document
from gateway.api.operation import ApiRoute
from gateway.auth import origin_allowed
from gateway.bus.facade import Bus
from gateway.directory import AgentDirectory
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.sql import Store

STATIC = Path(__file__).resolve().parent.parent / "static"


class OpsRoutes:
    def __init__(
        self,
        *,
        bus: Bus,
        directory: AgentDirectory,
        metrics: Metrics,
        settings: Settings,
        stopping: asyncio.Event,
        store: Store,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self.bus = bus
        self._leads = leads  # whether this instance runs the timers (gateway/leadership.py)
        self.directory = directory
        self._metrics = metrics
        self.settings = settings
        self.stopping = stopping
        self.store = store
        self._demo_html: str | None = None
        self._openapi: dict[str, Any] | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute("/healthz", self.healthz, method="GET", summary="Liveness", secured=False),
            ApiRoute(
                "/readyz",
                self.readyz,
                method="GET",
                summary="Readiness: database reachable (503 if not); bus state reported",
                secured=False,
                errors=(503,),
            ),
            ApiRoute(
                "/metrics",
                self.metrics,
                method="GET",
                summary="Prometheus metrics",
                secured=False,
                produces="text/plain",
            ),
            ApiRoute("/openapi.json", self.openapi, method="GET", summary="This document", secured=False),
            Route("/", self.demo, methods=["GET"]),
            Route("/console", self.console, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]

    async def healthz(self, _request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        for name, probe in (("database", self.store.ping), ("bus", self.bus.ping)):
            try:
                async with asyncio.timeout(3):
                    await probe()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {exc.__class__.__name__}"
        # Only the database decides: without it nothing can be accepted (503, take this
        # instance out). Without the bus everything is still accepted and stored, and feeds
        # catch up from the store (docs/operations.md): ready, but "degraded", so that a
        # shared bus going down does not take every instance out of the load balancer.
        ok = checks["database"] == "ok" and not self.stopping.is_set()
        if self.stopping.is_set():
            checks["server"] = "shutting down"
        status = "unavailable" if not ok else "ok" if checks["bus"] == "ok" else "degraded"
        # Whether this instance runs the timers and sweepers (gateway/leadership.py).
        leader = self._leads()
        return JSONResponse(
            {"status": status, "checks": checks, "leader": leader}, status_code=200 if ok else 503
        )

    async def metrics(self, _request: Request) -> Response:
        return Response(self._metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> JSONResponse:
        if self._openapi is None:
            self._openapi = openapi_document(request.app.routes)
        return JSONResponse(self._openapi)

    async def console(self, _request: Request) -> FileResponse:
        return FileResponse(STATIC / "console.html", headers={"cache-control": "no-cache"})

    async def demo(self, request: Request) -> HTMLResponse:
        """The demo page, for `?agent=` or else the first agent that allows the page's origin.

        The page's origin is what the browser will send as `Origin` when it mints its
        tokens: this request's scheme and Host. No agent allows it: the page says so.
        """
        agent = request.query_params.get("agent") or self.demo_agent(
            f"{request.url.scheme}://{request.url.netloc}"
        )
        answer = self.directory.get(agent).answer if agent and agent in self.directory else ""
        if self._demo_html is None:
            self._demo_html = (STATIC / "index.html").read_text(encoding="utf-8")
        body = f'<body data-agent="{html.escape(agent or "")}" data-answer="{html.escape(answer)}">'
        page = self._demo_html.replace('<body data-agent="" data-answer="">', body, 1)
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    def demo_agent(self, origin: str) -> str | None:
        """gateway.toml's agents in the file's order, then those agent processes added."""
        configured = list(self.settings.agents)
        ordered = configured + [a for a in self.directory.ids() if a not in self.settings.agents]
        for agent_id in ordered:
            config = self.directory.find(agent_id)
            if config is not None and origin_allowed(origin, config.allowed_origins):
                return agent_id
        return None
