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
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from gateway.api.models import FeedQuery
from gateway.api.operation import ApiRoute, parse_query
from gateway.auth import Principal
from gateway.bus.base import Subscription, SubscriptionClosed
from gateway.codec import dumps, encode_event
from gateway.errors import BadRequest, NotFound, Unauthorized
from gateway.events import Event
from gateway.runtime import Runtime
from gateway.tasks import first_completed

REPLAY_BATCH = 500
PING = b": ping\n\n"


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedFilter:
    agents: frozenset[str]  # visible agents; empty means none
    agent_keys: frozenset[bytes] = frozenset()
    session: bytes | None = None
    types: frozenset[bytes] | None = None
    tokens: bool = False
    # An unfiltered feed also follows agents of its scope that appear later (a process
    # registers one): asked once per unknown agent, the answer remembered.
    late: Callable[[str], bool] | None = None
    _late_seen: dict[bytes, bool] = field(default_factory=dict)

    def match(self, header: bytes) -> bool:
        type_, _seq, agent, session = header.split(b"\t")
        if type_ == b"bot.token" and not self.tokens:
            return False
        if self.types is not None and type_ not in self.types:
            return False
        if self.session is not None and session != self.session:
            return False
        if agent in self.agent_keys:
            return True
        if self.late is None:
            return False
        seen = self._late_seen.get(agent)
        if seen is None:
            seen = self._late_seen[agent] = self.late(agent.decode())
        return seen


class FeedChannel:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

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
            record = await self.rt.auth.redeem(token, "stream")
            config = self.rt.directory.find(record.agent_id)
            # A stream token reads one agent, and only one session when it was minted for one.
            return Principal(
                name="stream-token",
                tenant=None if config is None else config.tenant,
                agents=frozenset({record.agent_id}),
                read_only=True,
                session=record.session_id,
            )
        return await self.rt.access.key(request)

    async def all_events(self, request: Request) -> Response | FeedStream:
        q = parse_query(request, FeedQuery)
        principal = await self._principal(request)
        wanted = _csv(q.agents)
        if wanted is not None:
            for agent in wanted:
                self.rt.access.agent(principal, agent)
            return self._stream(request, q, principal, set(wanted), fixed=True)
        # Every agent the scope sees, including agents registered after the feed opened.
        return self._stream(request, q, principal, set(self.rt.access.agents(principal)), fixed=False)

    async def agent_events(self, request: Request) -> Response | FeedStream:
        q = parse_query(request, FeedQuery)
        agent = request.path_params["agent"]
        principal = await self._principal(request)
        self.rt.access.agent(principal, agent)
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
        access = self.rt.access
        flt = FeedFilter(
            agents=frozenset(agents),
            agent_keys=frozenset(a.encode() for a in agents),
            session=session.encode() if session else None,
            types=None if types is None else frozenset(t.encode() for t in types),
            tokens=tokens,
            late=None if fixed else (lambda agent: access.sees(principal, agent)),
        )
        return FeedStream(self.rt, flt, last_id, session=session, types=types)


def _csv(value: str | None) -> set[str] | None:
    if value is None or not value.strip():
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


class FeedStream:
    """An ASGI response that streams one client's feed until it leaves or falls behind."""

    def __init__(
        self,
        rt: Runtime,
        flt: FeedFilter,
        last_id: int | None,
        *,
        session: str | None,
        types: set[str] | None,
    ) -> None:
        self.rt = rt
        self.flt = flt
        self.last_id = last_id
        self.session = session
        self.types = types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        server = rt.settings.server
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
        gauge = rt.metrics.sse_clients
        gauge.inc()
        try:
            async with rt.bus.subscribe_all(server.sse_buffer_events) as sub:
                await self._write(send, b": connected\n\n")
                high_water = await self._replay(send) if self.last_id is not None else 0
                await first_completed(
                    self._pump(sub, send, high_water), _disconnected(receive), rt.stopping.wait()
                )
        except _Gone:
            rt.metrics.sse_dropped.inc()
        except OSError:
            pass
        finally:
            gauge.dec()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send, body: bytes) -> None:
        try:
            async with asyncio.timeout(self.rt.settings.server.sse_send_timeout_seconds):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            raise _Gone from None  # a stalled client is cut loose; it resumes with Last-Event-ID

    async def _replay(self, send: Send) -> int:
        assert self.last_id is not None
        cursor = self.last_id
        while True:
            batch = await self.rt.store.events_after(
                cursor, agents=self.flt.agents, session_id=self.session, types=self.types, limit=REPLAY_BATCH
            )
            if batch:
                await self._write(send, b"".join(_frame(e) for e in batch))
                cursor = batch[-1].seq or cursor
            if len(batch) < REPLAY_BATCH:
                break
        body = dumps({"seq": cursor}).encode()
        await self._write(send, b"event: stream.caughtUp\ndata: " + body + b"\n\n")
        return cursor

    async def _pump(self, sub: Subscription, send: Send, high_water: int) -> None:
        ping = self.rt.settings.server.sse_ping_seconds
        match = self.flt.match
        loop = asyncio.get_running_loop()
        # Keepalive counts from the last byte written, not the last bus message: a
        # filtered feed on a busy gateway must still ping.
        next_ping = loop.time() + ping
        while True:
            raw: bytes | None
            try:
                async with asyncio.timeout_at(next_ping):
                    raw = await sub.get()
            except TimeoutError:
                await self._write(send, PING)
                next_ping = loop.time() + ping
                continue
            except SubscriptionClosed as exc:
                if exc.overflowed:
                    self.rt.metrics.sse_dropped.inc()
                return
            out: list[bytes] = []
            while raw is not None:  # drain what queued up: one write for a burst
                header, _, body = raw.partition(b"\n")
                if match(header):
                    type_, seq, _agent, _session = header.split(b"\t")
                    if not seq:
                        out.append(b"event: " + type_ + b"\ndata: " + body + b"\n\n")
                    elif int(seq) > high_water:
                        out.append(b"id: " + seq + b"\nevent: " + type_ + b"\ndata: " + body + b"\n\n")
                raw = sub.get_nowait()
            if out:
                await self._write(send, b"".join(out))
                next_ping = loop.time() + ping


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
