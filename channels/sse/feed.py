"""The event feeds: `GET /v1/events` and `GET /v1/agents/{agent}/events`.

Frames are written straight to the ASGI `send` (no per-connection framework
machinery): the bus hands over pre-encoded envelopes whose header line lets a feed
filter and frame an event without decoding its JSON (PERFORMANCE.md lesson 2).

Resume: subscribe to the bus first, replay from the store everything after
`Last-Event-ID`, send `stream.caughtUp`, then go live skipping anything at or below
the last replayed `seq`. Events committed before the replay query are in the
replay; events committed after it have a larger `seq` and are on the bus: no gap,
no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from gateway.access import Access
from gateway.api.models import FeedQuery
from gateway.api.operation import ApiRoute, parse_query
from gateway.auth import Auth, Principal
from gateway.bus.fanout import Fanout, Inbox, Interest
from gateway.codec import dumps, encode_event
from gateway.directory import AgentDirectory
from gateway.errors import BadRequest, NotFound, Unauthorized
from gateway.events import Event
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.sql import Store
from gateway.tasks import first_completed

REPLAY_BATCH = 500
PING = b": ping\n\n"


class FeedChannel:
    def __init__(
        self,
        fanout: Fanout,
        *,
        access: Access,
        auth: Auth,
        directory: AgentDirectory,
        metrics: Metrics,
        settings: Settings,
        stopping: asyncio.Event,
        store: Store,
    ) -> None:
        self.access = access
        self.auth = auth
        self.directory = directory
        self.metrics = metrics
        self.settings = settings
        self.stopping = stopping
        self.store = store
        self.fanout = fanout
        server = settings.server
        self.keeper = FeedKeeper(ping=server.sse_ping_seconds, send_timeout=server.sse_send_timeout_seconds)

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/events",
                self.all_events,
                method="GET",
                summary="Event feed (SSE) of every visible agent",
                query=FeedQuery,
                headers=("Last-Event-ID",),
                produces="text/event-stream",
                errors=(401, 403, 404),
            ),
            ApiRoute(
                "/v1/agents/{agent}/events",
                self.agent_events,
                method="GET",
                summary="Event feed (SSE) of one agent",
                query=FeedQuery,
                headers=("Last-Event-ID",),
                produces="text/event-stream",
                errors=(401, 403, 404),
            ),
        ]

    async def _principal(self, request: Request) -> Principal:
        token = request.query_params.get("token")
        if token is not None:
            if token.startswith("sk_"):
                raise Unauthorized("API keys are never accepted in URLs: send `Authorization: Bearer <key>`")
            record = await self.auth.redeem(token, "stream")
            config = self.directory.find(record.agent_id)
            # A stream token reads one agent, and only one session when it was minted for one.
            return Principal(
                name="stream-token",
                tenant=None if config is None else config.tenant,
                agents=frozenset({record.agent_id}),
                read_only=True,
                session=record.session_id,
            )
        return await self.access.key(request)

    async def all_events(self, request: Request) -> Response | FeedStream:
        q = parse_query(request, FeedQuery)
        principal = await self._principal(request)
        wanted = _csv(q.agents)
        if wanted is not None:
            for agent in wanted:
                self.access.agent(principal, agent)
            return self._stream(request, q, principal, set(wanted), fixed=True)
        # Every agent the scope sees, including agents registered after the feed opened.
        return self._stream(request, q, principal, set(self.access.agents(principal)), fixed=False)

    async def agent_events(self, request: Request) -> Response | FeedStream:
        q = parse_query(request, FeedQuery)
        agent = request.path_params["agent"]
        principal = await self._principal(request)
        self.access.agent(principal, agent)
        return self._stream(request, q, principal, {agent}, fixed=True)

    def _stream(
        self, request: Request, q: FeedQuery, principal: Principal, agents: set[str], *, fixed: bool
    ) -> FeedStream:
        header = request.headers.get("last-event-id")
        last = header or (None if q.lastEventId is None else str(q.lastEventId))
        last_id: int | None = None
        if last is not None and last != "":
            if not (last.isascii() and last.isdigit()) or len(last) > 18:
                raise BadRequest(
                    "Last-Event-ID must be a non-negative integer `seq`", code="invalid_last_event_id"
                )
            last_id = int(last)
        types = _csv(q.types)
        session = q.session
        if principal.session is not None:
            if session and session != principal.session:
                raise NotFound(f"no session {session!r}", code="unknown_session")
            session = principal.session  # the scope's session, whatever the query says
        tokens = (q.tokens or "false").lower() in ("1", "true", "yes")
        access = self.access
        interest = Interest(
            agents=frozenset(agents),
            types=None if types is None else frozenset(types),
            tokens=tokens,
            late=None if fixed else (lambda agent: access.sees(principal, agent)),
        )
        return FeedStream(self, self.fanout, self.keeper, interest, last_id, session=session, types=types)


def _csv(value: str | None) -> set[str] | None:
    if value is None or not value.strip():
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


class FeedKeeper:
    """One task for every open feed: keepalive pings and the cut-off of stalled writes.

    A timer per feed read and per write (`asyncio.timeout`) cost ≈ 23 µs per delivery
    under uvloop (bench/README.md); instead each feed notes when it last wrote and
    since when a write is pending, and this sweeper looks at all of them a few times
    per ping interval.
    """

    def __init__(self, *, ping: float, send_timeout: float) -> None:
        self.ping = ping
        self.send_timeout = send_timeout
        self.interval = min(1.0, max(0.01, min(ping, send_timeout) / 4))
        self.feeds: set[FeedStream] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, feed: FeedStream) -> None:
        self.feeds.add(feed)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="sse-keeper")

    def discard(self, feed: FeedStream) -> None:
        self.feeds.discard(feed)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.feeds:
            await asyncio.sleep(self.interval)
            now = loop.time()
            for feed in tuple(self.feeds):
                feed.tick(now, self.ping, self.send_timeout)


class FeedStream:
    """An ASGI response that streams one client's feed until it leaves or falls behind."""

    def __init__(
        self,
        feeds: FeedChannel,
        fanout: Fanout,
        keeper: FeedKeeper,
        interest: Interest,
        last_id: int | None,
        *,
        session: str | None,
        types: set[str] | None,
    ) -> None:
        self.feeds = feeds
        self.fanout = fanout
        self.keeper = keeper
        self.interest = interest
        self.last_id = last_id
        self.session = session
        self.types = types
        # Live-phase state the keeper reads (loop time): last byte written, pending write.
        self.last_write = 0.0
        self.writing_since: float | None = None
        self.ping_due = False
        self.stalled = False
        self._inbox: Inbox | None = None
        self._pump_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fc = self.feeds
        server = fc.settings.server
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        gauge = fc.metrics.sse_clients
        gauge.inc()
        try:
            # Subscribed before the replay: events committed meanwhile wait in the inbox.
            async with self.fanout.open(self.interest, server.sse_buffer_events) as inbox:
                await self._write(send, b": connected\n\n")
                high_water = await self._replay(send) if self.last_id is not None else 0
                await first_completed(
                    self._pump(inbox, send, high_water), _disconnected(receive), fc.stopping.wait()
                )
            if self.stalled:
                raise _Gone
        except _Gone:
            fc.metrics.sse_dropped.inc()
        except OSError:
            pass
        finally:
            self.keeper.discard(self)
            gauge.dec()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send, body: bytes) -> None:
        """A write before the live phase (the replay): bounded by its own timeout."""
        try:
            async with asyncio.timeout(self.feeds.settings.server.sse_send_timeout_seconds):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            raise _Gone from None  # a stalled client is cut loose; it resumes with Last-Event-ID

    async def _replay(self, send: Send) -> int:
        assert self.last_id is not None
        cursor = self.last_id
        agents = self.interest.agents
        while True:
            batch = await self.feeds.store.events_after(
                cursor, agents=agents, session_id=self.session, types=self.types, limit=REPLAY_BATCH
            )
            if batch:
                await self._write(send, b"".join(_frame(e) for e in batch))
                cursor = batch[-1].seq or cursor
            if len(batch) < REPLAY_BATCH:
                break
        body = dumps({"seq": cursor}).encode()
        await self._write(send, b"event: stream.caughtUp\ndata: " + body + b"\n\n")
        return cursor

    def tick(self, now: float, ping: float, send_timeout: float) -> None:
        """Called by the keeper: cut a write stalled past the timeout, or ask for a ping."""
        since = self.writing_since
        if since is not None:
            if now - since > send_timeout and self._pump_task is not None and not self.stalled:
                self.stalled = True  # it resumes with Last-Event-ID
                self._pump_task.cancel()
        elif now - self.last_write >= ping and self._inbox is not None and not self.ping_due:
            self.ping_due = True
            self._inbox.wake()

    async def _pump(self, inbox: Inbox, send: Send, high_water: int) -> None:
        loop = asyncio.get_running_loop()
        self._inbox = inbox
        self._pump_task = asyncio.current_task()
        session = self.session
        # Keepalive counts from the last byte written, not the last bus message.
        self.last_write = loop.time()
        self.keeper.add(self)
        while True:
            env = inbox.get_nowait()
            if env is None:
                if inbox.closed:
                    if inbox.overflowed:
                        self.feeds.metrics.sse_dropped.inc()
                    return
                if self.ping_due:
                    body = PING
                else:
                    await inbox.wait()
                    continue
            else:
                out: list[bytes] = []
                while env is not None:  # drain what queued up: one write for a burst
                    if session is None or env.session_id == session:
                        seq = env.seq
                        if seq is None or seq > high_water:
                            out.append(env.sse_frame())
                    env = inbox.get_nowait()
                if not out:
                    continue
                body = b"".join(out)
            self.writing_since = loop.time()
            try:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            finally:
                self.writing_since = None
            self.last_write = loop.time()
            self.ping_due = False


class _Gone(Exception):
    pass


def _frame(event: Event) -> bytes:
    raw = encode_event(event)
    _, _, body = raw.partition(b"\n")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq or 0, str(event.type).encode(), body)


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
