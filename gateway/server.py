"""The composition root: settings → store, bus, services, channels → a Starlette app.

`create_app(settings)` only builds objects (nothing connects); the lifespan opens
and closes resources. `serve()` runs uvicorn with a shutdown hook that tells the
long-lived connections to close cleanly before uvicorn waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from channels.chat.channel import ChatChannel
from channels.sse.feed import FeedChannel
from channels.twilio.accounts import PROVIDER as TWILIO
from channels.twilio.accounts import TwilioAccounts
from channels.twilio.messaging import TwilioMessaging
from channels.twilio.outbound import TwilioOutbound
from channels.twilio.voice import TwilioVoice
from channels.whatsapp.channel import PROVIDER as WHATSAPP
from channels.whatsapp.channel import WhatsAppChannel
from gateway import sqlite_owner
from gateway.access import Access
from gateway.agents.factory import AgentFactory
from gateway.agents.remote import ProcessHub
from gateway.api.agent_socket import AgentSocket
from gateway.api.http import CrashGuard, on_crash, on_gateway_error, on_http_error
from gateway.api.keys import KeyRoutes
from gateway.api.messages import MessageRoutes
from gateway.api.ops import OpsRoutes
from gateway.api.pricing import PricingRoutes
from gateway.api.sessions import SessionRoutes
from gateway.api.takeover import TakeoverRoutes
from gateway.api.tokens import TokenRoutes
from gateway.auth import Auth, origin_allowed
from gateway.bus.facade import Bus
from gateway.bus.fanout import Fanout
from gateway.calls import CallControl
from gateway.control import Control
from gateway.conversations import ConversationService
from gateway.delivery import Delivery
from gateway.directory import AgentDirectory
from gateway.errors import GatewayError
from gateway.leadership import Leadership
from gateway.limits import SessionLimits
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.placement import Placement
from gateway.ratelimit import RateLimiter
from gateway.settings import AgentConfig, Settings
from gateway.store.db import create_engine, ensure_schema
from gateway.store.sql import Store
from gateway.tasks import supervised
from gateway.turn_lease import SharedLeases, TurnLeases, stale_dropper

log = logging.getLogger("gateway.server")


@dataclass(kw_only=True)
class Services:
    """What the composition root built, kept for the lifespan, the CLI and tests.

    Never handed to a component: each gets only what it uses through its constructor.
    """

    settings: Settings
    store: Store
    bus: Bus
    directory: AgentDirectory
    auth: Auth
    access: Access
    service: ConversationService
    metrics: Metrics
    agents: AgentFactory
    deliveries: dict[str, Delivery]
    outbox: Outbox
    limits: SessionLimits
    # Which process runs the timers and sweepers (several instances on PostgreSQL).
    leadership: Leadership
    # Browser tokens minted through an allowed Origin, per origin (docs/security.md).
    origin_mints: RateLimiter
    # The live phone calls (the Twilio voice channel), once the app is composed.
    calls: CallControl | None = None
    placement: Placement | None = None  # several instances (gateway/placement.py)
    control: Control | None = None  # several instances (gateway/control.py)
    # Set when the server begins to shut down: long-lived connections close cleanly.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def build_services(settings: Settings, env: Mapping[str, str] | None = None) -> Services:
    env = os.environ if env is None else env
    metrics = Metrics()

    def published(events: list[Any]) -> None:
        bus.publish_all(events)
        for e in events:
            metrics.events.labels(str(e.type)).inc()

    store = Store(create_engine(settings.server.database_url), on_commit=published)
    # A shared bus fills what it loses from the event log (gateway/bus/sequencer.py).
    bus = Bus.from_url(settings.server.bus_url, store, catch_up_seconds=settings.server.bus_catch_up_seconds)
    directory = AgentDirectory(settings)
    factory = AgentFactory(ProcessHub(), env)
    deliveries: dict[str, Delivery] = {}
    # Orders for what lives in another instance's memory: turns, calls (gateway/control.py).
    control = Control(bus, shared=not settings.server.bus_url.startswith("memory:"))
    service = ConversationService(
        control=control,
        leases=turn_leases(settings, store),
        settings=settings,
        store=store,
        bus=bus,
        directory=directory,
        agents=factory,
        metrics=metrics,
        deliveries=deliveries,
    )
    # One process at a time runs the timers and sweepers (several instances on PostgreSQL).
    leadership = Leadership(store.engine, interval=settings.server.leader_check_seconds)
    placement = None
    if isinstance(service.turns.leases, SharedLeases):
        # A process-served agent's turns run where its process is connected.
        placement = Placement(
            store,
            bus,
            directory,
            factory.hub,
            patience_ms=int(settings.server.turn_lease_seconds * 1000),
            submit=service.turns.submit,
        )
        service.turns.place = placement.here
        store.fence_replies = True
    leases = service.turns.leases
    instance = leases.owner if isinstance(leases, SharedLeases) else None
    outbox = Outbox(store, deliveries, settings.server, leads=leadership.leads, instance=instance)
    # Every commit that queues parts (a reply, progressive paragraphs, a human message, a
    # template) hands them to the outbox: `service.on_outbox` stays a no-op, since waking
    # the outbox without parts would make it poll the table once per reply.
    store.outbox.on_queued = outbox.wake
    factory.builtins.request_human = service.request_human
    auth = Auth(settings, store, env)
    return Services(
        settings=settings,
        store=store,
        bus=bus,
        directory=directory,
        auth=auth,
        access=Access(auth, directory, store, RateLimiter(settings.server.key_requests_per_minute)),
        origin_mints=RateLimiter(settings.server.origin_mints_per_minute),
        service=service,
        metrics=metrics,
        agents=factory,
        deliveries=deliveries,
        outbox=outbox,
        limits=SessionLimits(
            store, service, directory, settings.server.limits_sweep_seconds, leads=leadership.leads
        ),
        leadership=leadership,
        placement=placement,
        control=control,
    )


LEASE_POOL = 8  # connections for turn leases, per instance


def turn_leases(settings: Settings, store: Store) -> TurnLeases | None:
    """Several instances (PostgreSQL and a shared bus): who runs a session's turns is a
    lease row (gateway/turn_lease.py). One process: its own runner is enough."""
    if store.engine.dialect.name != "postgresql" or settings.server.bus_url.startswith("memory"):
        return None
    owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
    # Its own small pool, without overflow: a claim per turn through the shared pool made
    # it open and close a PostgreSQL connection (a server process) per claim under load,
    # and a renewal could wait behind reads. Lease statements never nest, so claims queue.
    engine = create_engine(settings.server.database_url, pool_size=LEASE_POOL, max_overflow=0)
    return SharedLeases(
        engine,
        owner,
        ttl_seconds=settings.server.turn_lease_seconds,
        stale=stale_dropper(store.hot.version_of, store.hot.drop),
    )


def provider_http(settings: Settings) -> httpx.AsyncClient:
    """One pooled client per provider (Graph API, Twilio REST): sends reuse kept-alive
    connections instead of a TCP (and TLS) handshake per message. The pool holds a
    connection for each outbox send slot plus the turns' typing calls."""
    slots = settings.server.outbox_concurrency * 2
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=10.0),
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=max(100, slots), max_keepalive_connections=slots, keepalive_expiry=20
        ),
    )


class MetricsMiddleware:
    """Counts requests by route (the endpoint's name, never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def tap(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tap)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__qualname__", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()


def create_app(
    settings: Settings, *, env: Mapping[str, str] | None = None, runtime: Services | None = None
) -> Starlette:
    rt = runtime or build_services(settings, env)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # A second process serving the same SQLite file is refused (gateway/sqlite_owner.py).
        with sqlite_owner.owning(settings.server.database_url):
            async with serving() as state:
                yield state

    @contextlib.asynccontextmanager
    async def serving() -> AsyncIterator[dict[str, Any]]:
        server = settings.server
        await ensure_schema(rt.store.engine, server.database_url, migrate=server.auto_migrate)
        await rt.store.sync_agents(rt.directory.as_json())
        await load_process_agents(rt)
        await rt.bus.connect()
        if isinstance(rt.service.turns.leases, SharedLeases):
            await rt.service.turns.leases.register()  # alive, before its outbox claims a part
        await rt.service.resume_pending()
        workers = [
            # A worker that a database outage kills starts again (gateway/tasks.py).
            asyncio.create_task(supervised("outbox", rt.outbox.run, stopping=rt.stopping), name="outbox"),
            asyncio.create_task(rt.limits.run(), name="session-limits"),
            asyncio.create_task(
                supervised("leadership", rt.leadership.run, stopping=rt.stopping), name="leadership"
            ),
        ]
        if isinstance(rt.service.turns.leases, SharedLeases):
            # Renew what this instance runs; adopt what a dead one left (gateway/turn_lease.py).
            workers.append(asyncio.create_task(rt.service.turns.leases.run(), name="turn-leases"))
            every = server.turn_lease_seconds / 2
            workers.append(asyncio.create_task(rt.service.adopt_forever(every), name="turn-adoption"))
        if rt.placement is not None:
            workers.append(asyncio.create_task(rt.placement.serve(), name="turn-placement"))
        if rt.control is not None and rt.control.shared:
            workers.append(asyncio.create_task(rt.control.serve(), name="control"))
        log.info("gateway ready", extra={"agent": ",".join(rt.directory.ids())})
        try:
            yield {"runtime": rt}
        finally:
            rt.stopping.set()
            # Turns finish first (their replies reach the outbox, which keeps sending
            # meanwhile); then the outbox finishes or releases what is in flight.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + server.shutdown_grace_seconds
            await rt.service.turns.shutdown(server.shutdown_grace_seconds)
            await rt.outbox.stop(max(1.0, deadline - loop.time()))
            if isinstance(rt.service.turns.leases, SharedLeases):
                with contextlib.suppress(Exception):  # it expires by itself
                    await rt.service.turns.leases.retire()
                await rt.service.turns.leases.close()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await rt.bus.disconnect()
            await rt.agents.aclose()
            await graph_http.aclose()
            await twilio_http.aclose()
            await rt.store.close()
            log.info("gateway stopped")

    graph_http, twilio_http = provider_http(settings), provider_http(settings)
    # Each component gets only what it uses (no locator): the record `rt` stays here.
    env_ = os.environ if env is None else env
    whatsapp = WhatsAppChannel(
        env_,
        graph_http,
        access=rt.access,
        deliveries=rt.deliveries,
        directory=rt.directory,
        metrics=rt.metrics,
        service=rt.service,
        settings=settings,
        store=rt.store,
    )
    rt.deliveries[WHATSAPP] = whatsapp
    twilio = TwilioAccounts(env_, twilio_http, directory=rt.directory)
    voice = TwilioVoice(
        twilio,
        access=rt.access,
        agents=rt.agents,
        bus=rt.bus,
        directory=rt.directory,
        metrics=rt.metrics,
        service=rt.service,
        settings=settings,
        stopping=rt.stopping,
        store=rt.store,
        remote=rt.control,
    )
    rt.calls = voice
    rt.agents.builtins.call_control = voice.control
    messaging = TwilioMessaging(twilio, service=rt.service, settings=settings, store=rt.store)
    rt.deliveries[TWILIO] = messaging
    outbound = TwilioOutbound(twilio, messaging, access=rt.access, service=rt.service)
    # One reader of the global topic for every feed and agent socket (gateway/bus/fanout.py).
    fanout = Fanout(rt.bus)
    rt.directory.watch(fanout.agent_changed)
    routes: list[BaseRoute] = [Route("/v1/tokens", _preflight(rt.directory), methods=["OPTIONS"])]
    for part in (
        TokenRoutes(
            access=rt.access,
            auth=rt.auth,
            directory=rt.directory,
            origin_mints=rt.origin_mints,
            settings=settings,
            store=rt.store,
        ),
        KeyRoutes(access=rt.access, auth=rt.auth, store=rt.store),
        MessageRoutes(access=rt.access, bus=rt.bus, service=rt.service, settings=settings, store=rt.store),
        SessionRoutes(access=rt.access, service=rt.service, store=rt.store),
        PricingRoutes(access=rt.access, store=rt.store),
        TakeoverRoutes(
            access=rt.access, directory=rt.directory, service=rt.service, settings=settings, store=rt.store
        ),
        FeedChannel(
            fanout,
            access=rt.access,
            auth=rt.auth,
            directory=rt.directory,
            metrics=rt.metrics,
            settings=settings,
            stopping=rt.stopping,
            store=rt.store,
        ),
        ChatChannel(
            auth=rt.auth,
            bus=rt.bus,
            directory=rt.directory,
            metrics=rt.metrics,
            service=rt.service,
            settings=settings,
            stopping=rt.stopping,
            store=rt.store,
        ),
        AgentSocket(
            rt.agents.hub,
            fanout,
            access=rt.access,
            calls=voice,
            directory=rt.directory,
            metrics=rt.metrics,
            service=rt.service,
            settings=settings,
            stopping=rt.stopping,
            store=rt.store,
        ),
        whatsapp,
        messaging,
        outbound,
        voice,
        OpsRoutes(
            bus=rt.bus,
            directory=rt.directory,
            metrics=rt.metrics,
            settings=settings,
            stopping=rt.stopping,
            store=rt.store,
            leads=rt.leadership.leads,
        ),
    ):
        routes.extend(part.routes())
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: on_gateway_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
    app.add_middleware(CrashGuard)
    app.add_middleware(MetricsMiddleware, metrics=rt.metrics)  # type: ignore[arg-type]
    app.state.runtime = rt
    return app


async def load_process_agents(rt: Services) -> None:
    """Agents declared by processes stay known across restarts (their sessions, tokens)."""
    for agent_id, (origin, config, _paused) in (await rt.store.agent_rows()).items():
        if origin == "process" and agent_id not in rt.directory:
            try:
                rt.directory.put(agent_id, AgentConfig.model_validate(config), origin="process")
            except ValidationError:
                log.warning("stored agent %s has an invalid config; skipped", agent_id)


def _preflight(directory: AgentDirectory) -> Any:
    async def preflight(request: Request) -> Response:
        """CORS preflight for minting tokens from a page on an allowed origin."""
        origin = request.headers.get("origin")
        if not any(origin_allowed(origin, directory.get(a).allowed_origins) for a in directory.ids()):
            return Response(status_code=403)
        return Response(
            status_code=204,
            headers={
                "access-control-allow-origin": origin or "",
                "access-control-allow-methods": "POST",
                "access-control-allow-headers": "content-type",
                "access-control-max-age": "600",
                "vary": "Origin",
            },
        )

    return preflight


class GatewayServer(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM, tell feeds and sockets to close first.

    uvicorn waits for open connections before it runs the lifespan shutdown; SSE
    feeds and WebSockets never end on their own, so without this they would hold
    the shutdown for the whole graceful timeout.
    """

    def __init__(self, config: uvicorn.Config, runtime: Services) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.runtime.stopping.set()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown, so the process would end
        # "killed by SIGTERM"; a shutdown we completed cleanly exits 0 instead.
        self._captured_signals.clear()

    def stop(self) -> None:
        """Shut down as on SIGTERM, without re-raising a signal afterwards (tests, embedding)."""
        self.runtime.stopping.set()
        self.should_exit = True


def server_for(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    log_config: dict[str, Any] | None = None,
) -> GatewayServer:
    rt = build_services(settings, env)
    app = create_app(settings, env=env, runtime=rt)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port if port is None else port,
        ws_per_message_deflate=False,  # token streams: deflate costs more than it saves
        log_config=log_config,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_seconds) + 5,
        lifespan="on",
    )
    return GatewayServer(config, rt)
