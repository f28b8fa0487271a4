"""The conversation service: the one writer of conversations.

Channels hand it typed inbound messages; it stores them (the store publishes the
events after the commit), runs one turn at a time per session through the agent,
streams the agent's deltas as live `bot.token` events, and stores the finished reply.
Observers (SSE feeds, chat sockets, agent processes) only read the bus and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from gateway import ids
from gateway.agents.base import (
    Agent,
    ChatMessage,
    TextDelta,
    ToolCall,
    ToolCallsRequested,
    ToolResultReady,
    Turn,
)
from gateway.bus.facade import Bus
from gateway.delivery import Delivery, Template, provider_of
from gateway.directory import AgentDirectory
from gateway.errors import BadRequest, Conflict, GatewayError, NotFound
from gateway.events import ContactRef, Event, InboundMessage, now_ms
from gateway.fairness import TenantGate
from gateway.metrics import Metrics
from gateway.redact import redact_url
from gateway.settings import AgentConfig, Settings
from gateway.store.outbox import OutboxPart
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import Ingested, NewMessage, Store
from gateway.turns import TurnRunner
from gateway.types import Channel, EventType

log = logging.getLogger("gateway.conversations")

HISTORY_CACHE_SESSIONS = 1024
# Turns reading their session, messages and history at once. Turns spend most of their
# life waiting on the agent, so many may run; but if a burst's hundreds of turns all read
# at once, every one waits on the pool behind all the others and no reply is ready until
# the whole burst has read. A small gate lets the first turns reply (and send) first.
READING_TURNS = 16


class AgentFactory(Protocol):
    def agent_for(self, agent_id: str, config: AgentConfig) -> Agent: ...


def check_text(text: object, limit: int) -> str:
    """The text rules every channel applies to what a user types."""
    if not isinstance(text, str):
        raise BadRequest("`text` must be a string", code="invalid_text")
    if not text.strip():
        raise BadRequest("`text` must not be empty", code="empty_text")
    if len(text) > limit:
        raise BadRequest(f"`text` is longer than {limit} characters", code="text_too_long")
    return text


class TokenStream:
    """Publishes a reply's deltas as `bot.token` events, coalesced every `flush_s`.

    With `flush_s == 0` every delta is its own event. Otherwise a delta that finds no
    window open goes out at once (so a slow stream, and every first token, pays no
    delay) and opens a window; deltas arriving inside it are sent together when it
    closes (fewer frames for fast streams; PERFORMANCE.md lesson 3).
    """

    def __init__(self, bus: Bus, base: Event, flush_s: float) -> None:
        self._bus = bus
        self._base = base
        self._flush_s = flush_s
        self._buf: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0

    def add(self, text: str) -> None:
        self.count += 1
        if not self._flush_s:
            self._emit(text)
            return
        if self._timer is None:
            self._emit(text)
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._window_closed)
            return
        self._buf.append(text)

    def _window_closed(self) -> None:
        self._timer = None
        if self._buf:  # a burst came in: send it, and keep coalescing
            text, self._buf = "".join(self._buf), []
            self._emit(text)
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._window_closed)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:
            text, self._buf = "".join(self._buf), []
            self._emit(text)

    def _emit(self, text: str) -> None:
        b = self._base
        self._bus.publish(
            Event(
                type=EventType.BOT_TOKEN,
                agent=b.agent,
                session_id=b.session_id,
                channel=b.channel,
                data={**b.data, "text": text},
            )
        )


class ParagraphSender:
    """Progressive mode: each finished paragraph of a reply goes out as soon as it is complete.

    Paragraphs are queued under keys derived from the user's message, so a turn that is
    re-run after a crash never queues a paragraph that already went out.
    """

    def __init__(
        self,
        service: ConversationService,
        session: SessionRecord,
        delivery: Delivery,
        reply_id: str,
        reply_to: MessageRecord,
        most: int = 0,
    ) -> None:
        self._service = service
        self._most = most  # limits.max_reply_messages: the last one is kept for the rest
        self._session = session
        self._delivery = delivery
        self._reply_id = reply_id
        self._reply_to = reply_to
        self._sent = 0  # characters of the reply already queued
        self.count = 0  # parts queued so far

    async def feed(self, text: str) -> None:
        if self._most and self.count >= self._most - 1:
            return  # the bound is near: the rest goes out together, as the reply's last message
        cut = text.rfind("\n\n", self._sent)
        if cut < 0:
            return
        chunk, self._sent = text[self._sent : cut], cut + 2
        if not chunk.strip():
            return
        payloads = self._delivery.render(self._session, chunk, self._reply_to if self.count == 0 else None)
        queued = [
            OutboxPart(payload=p, part=self.count + i, parts=0, key=f"{self._reply_to.id}:p{self.count + i}")
            for i, p in enumerate(payloads)
        ]
        self.count += len(queued)
        await self._service.store.outbox.enqueue(
            session_id=self._session.id, message_id=self._reply_id, parts=queued
        )
        self._service.on_outbox()

    def rest(self, text: str) -> str:
        return text[self._sent :]


class ConversationService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        bus: Bus,
        directory: AgentDirectory,
        agents: AgentFactory,
        metrics: Metrics,
        deliveries: Mapping[str, Delivery] | None = None,
    ) -> None:
        self.settings = settings
        # Store-and-forward channels by provider (filled by the composition root).
        self.deliveries: Mapping[str, Delivery] = deliveries if deliveries is not None else {}
        self.on_outbox: Callable[[], None] = lambda: None  # wakes the outbox worker
        self._background: set[asyncio.Task[None]] = set()
        self.store = store
        self.bus = bus
        self.directory = directory
        self.agents = agents
        self.metrics = metrics
        self.tenant_gate = TenantGate(settings.server.tenant_max_concurrent_turns)
        self.turns = TurnRunner(
            self._run_turn,
            give_up=self._give_up,
            max_concurrent=settings.server.max_concurrent_turns,
            gate=self._tenant_slot if self.tenant_gate.limit else None,
        )
        self._history: OrderedDict[str, tuple[tuple[int, int], list[MessageRecord]]] = OrderedDict()
        self._flush_s = settings.server.token_flush_ms / 1000
        self._reading = asyncio.Semaphore(READING_TURNS)

    # ------------------------------------------------------------- sessions

    async def start_session(
        self,
        *,
        agent_id: str,
        channel: Channel,
        contact: ContactRef | None = None,
        direction: str = "inbound",
        metadata: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        self.directory.get(agent_id)
        session, _ = await self.store.start_session(
            agent_id=agent_id,
            channel=channel,
            contact=contact,
            direction=direction,
            meta=dict(metadata or {}),
            endpoint=endpoint,
            session_id=session_id,
        )
        return session

    async def session(self, session_id: str) -> SessionRecord:
        session = await self.store.session(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session

    async def receive(self, message: InboundMessage) -> Ingested:
        """Store a user message (durably, with its event), then schedule the turn."""
        self.directory.get(message.agent)
        if message.session_id is not None:
            session = await self.session(message.session_id)
            if not session.active:
                raise Conflict(f"session {session.id} has ended", code="session_ended")
        result = await self.store.ingest_message(**_spec(message))
        self._schedule(result, message.agent)
        return result

    async def receive_many(self, messages: list[InboundMessage]) -> list[Ingested]:
        """A webhook batch: every message stored in one transaction, then their turns scheduled."""
        for message in messages:
            self.directory.get(message.agent)
        results = await self.store.ingest_many([_spec(m) for m in messages])
        for result, message in zip(results, messages, strict=True):
            self._schedule(result, message.agent)
        return results

    def _schedule(self, result: Ingested, agent_id: str) -> None:
        if result.message is not None and result.message.pending:
            sid = result.session.id
            self.turns.submit(sid)
            if self.directory.get(agent_id).interrupt:
                # The reply being streamed is dropped; the next turn answers it all together.
                self.turns.cancel(sid)

    async def set_context(self, session_id: str, key: str, value: Any) -> None:
        session = await self.session(session_id)
        context = dict(session.context)
        if value is None:
            context.pop(key, None)
        else:
            context[key] = value
        await self.store.update_session(session_id, context=context)

    async def end_session(
        self,
        session_id: str,
        reason: str,
        extra: dict[str, Any] | None = None,
        *,
        before: Sequence[Event] = (),
    ) -> SessionRecord:
        self.turns.forget(session_id)
        self._history.pop(session_id, None)
        session, _ = await self.store.end_session(session_id, reason, extra, before)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session

    async def erase_session(self, session_id: str, *, by: str | None = None) -> SessionRecord:
        self.turns.forget(session_id)
        self._history.clear()  # an erased conversation must never come back as someone's history
        session, _ = await self.store.erase_session(session_id, by=by)
        if session is None:
            raise NotFound(f"no session {session_id!r}", code="unknown_session")
        return session

    # ------------------------------------------------------------- takeover

    async def set_paused(
        self,
        agent_id: str,
        paused: bool,
        *,
        session_id: str | None = None,
        contact: str | None = None,
        cancel_running: bool = True,
        by: str = "operator",
    ) -> list[str]:
        """Pause / resume a session, a contact (with this agent) or the whole agent (idempotent)."""
        self.directory.get(agent_id)
        if session_id is not None:
            session = await self.session(session_id)
            if session.agent_id != agent_id:
                raise NotFound(f"no session {session_id!r} for agent {agent_id!r}", code="unknown_session")
            if not session.active:
                raise Conflict(f"session {session_id} has ended", code="session_ended")
        changed, _ = await self.store.set_paused(
            agent_id, paused, session_id=session_id, contact=contact, extra={"by": by}
        )
        if paused and session_id is None:
            for sid in changed:  # the stored event names the agent or contact; tell each session too
                self.bus.publish_to_session(
                    Event(
                        type=EventType.SESSION_PAUSED,
                        agent=agent_id,
                        session_id=sid,
                        data={"contact": contact},
                    )
                )
        if not paused:
            for sid in changed:  # handed back: the attention request is answered
                resumed = await self.store.session(sid)
                if resumed is not None and "attention" in resumed.meta:
                    await self.store.update_session(
                        sid, meta={k: v for k, v in resumed.meta.items() if k != "attention"}
                    )
        if paused and cancel_running:
            for sid in changed:
                # A reply being streamed stops now: the message gets a full AI reply or none.
                self.turns.forget(sid)
        return changed

    async def send_human(self, session_id: str, text: str, *, author: str, by: str | None = None) -> str:
        """An operator's message, delivered on the session's own channel, stored as `source: human`."""
        session = await self.session(session_id)
        if not session.active:
            raise Conflict(f"session {session_id} has ended", code="session_ended")
        delivery = self.deliveries.get(provider_of(session) or "")
        outbox: list[OutboxPart] = []
        if delivery is not None:
            if not delivery.window_open(session, now_ms()):
                raise Conflict(
                    "the 24-hour window is closed: only a template can reach this contact now",
                    code="window_closed",
                )
            payloads = delivery.render(session, text, None)
            outbox = [OutboxPart(payload=p, part=i, parts=len(payloads)) for i, p in enumerate(payloads)]
        message_id = ids.message_id()
        await self.store.record_reply(
            session_id=session_id,
            answered=[],
            messages=[
                NewMessage(
                    id=message_id,
                    role="assistant",
                    text=text,
                    source="human",
                    author=author,
                    meta={"by": by} if by else None,  # the key that sent it (audit)
                )
            ],
            outbox=outbox,
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={
                        "messageId": message_id,
                        "text": text,
                        "source": "human",
                        "author": author,
                        **({"by": by} if by else {}),
                    },
                )
            ],
        )
        if outbox:
            self.on_outbox()
        return message_id

    async def send_template(self, session: SessionRecord, template: Template) -> str:
        """Queue a provider-approved template: it may go out even when the 24-hour window is closed."""
        message = NewMessage(
            id=ids.message_id(), role="assistant", text=f"[template: {template.name}]", parts=[template.part]
        )
        await self.store.record_reply(
            session_id=session.id,
            answered=[],
            messages=[message],
            outbox=[OutboxPart(payload=template.payload, part=0, parts=1)],
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session.id,
                    channel=session.channel,
                    data={
                        "messageId": message.id,
                        "text": message.text,
                        "source": "agent",
                        "template": template.name,
                    },
                )
            ],
        )
        self.on_outbox()
        return message.id

    async def request_human(self, session_id: str, reason: str) -> None:
        """The agent asked for a person: pause (without cancelling the turn asking) and alert."""
        session = await self.session(session_id)
        await self.set_paused(session.agent_id, True, session_id=session_id, cancel_running=False, by="agent")
        # Stored on the session so a console opened later still sees who is waiting for a human.
        await self.store.update_session(
            session_id, meta={**session.meta, "attention": {"reason": reason, "at": now_ms()}}
        )
        await self.store.append_events(
            [
                Event(
                    type=EventType.SESSION_ATTENTION,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={"reason": reason},
                )
            ]
        )

    async def interrupt(
        self,
        session_id: str,
        message_id: str | None,
        spoken: str,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """The person cut the reply short (a phone call): keep only what they heard.

        A reply still streaming is cancelled and stored with the `spoken` text as the
        answer to the pending messages; a reply already stored (the model outran the
        speech) is cut down to `spoken`, its full text kept in `meta.fullText`.
        """
        await self.turns.stop(session_id)
        session = await self.session(session_id)
        messages = await self.store.messages(session_id)
        stored = next((m for m in messages if m.id == message_id), None) if message_id else None
        info: dict[str, Any] = {"messageId": message_id, "spoken": spoken, **(data or {})}
        notice = Event(
            type=EventType.CALL_INTERRUPTED,
            agent=session.agent_id,
            session_id=session_id,
            channel=session.channel,
            data=info,
        )
        if stored is not None:
            if stored.text != spoken and stored.role == "assistant":
                await self.store.update_message(
                    stored.id, text=spoken, meta={"interrupted": True, "fullText": stored.text}
                )
            await self.store.append_events([notice])
            return
        pending = [m for m in messages if m.pending and m.role == "user"]
        if message_id is None or not pending:
            await self.store.append_events([notice])
            return
        last = pending[-1].id
        await self.store.record_reply(
            session_id=session_id,
            answered=[m.id for m in pending],
            messages=[
                NewMessage(
                    id=message_id,
                    role="assistant",
                    text=spoken,
                    in_reply_to=last,
                    meta={"interrupted": True},
                )
            ],
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={
                        "messageId": message_id,
                        "text": spoken,
                        "source": "agent",
                        "inReplyTo": last,
                        "answered": [m.id for m in pending],
                        "interrupted": True,
                    },
                ),
                notice,
            ],
        )

    async def resume_pending(self) -> int:
        """After a restart: run the turns whose user messages were never answered."""
        # A call's reply is only worth making when its relay is back (it then runs the turn).
        sessions = await self.store.pending_sessions(exclude_channels=[str(Channel.PHONE)])
        for session_id in sessions:
            self.turns.submit(session_id)
        if sessions:
            log.info("resuming %d pending turns", len(sessions))
        return len(sessions)

    # ---------------------------------------------------------------- turns

    @contextlib.asynccontextmanager
    async def _tenant_slot(self, session_id: str) -> AsyncIterator[None]:
        """A turn waits for its tenant's slot before it takes a gateway-wide one, so a
        tenant's flood never holds the slots other tenants need (docs/tenants.md, "Limits")."""
        try:
            state = await self.store.turn_state(session_id)
        except Exception:  # the turn itself will meet (and retry) the database error
            state = None
        session = None if state is None else state[0]
        config = None if session is None else self.directory.find(session.agent_id)
        async with self.tenant_gate.slot(None if config is None else config.tenant):
            yield

    async def _run_turn(self, session_id: str) -> None:
        async with self._reading:
            # From the hot state its inbound message left (gateway/store/hot.py), or read once.
            state = await self.store.turn_state(session_id)
        if state is None:
            return
        session, messages = state
        if not session.active or session.paused:
            return  # paused: a human has the conversation; no agent turn runs
        pending = [m for m in messages if m.pending and m.role == "user"]
        if not pending:
            return
        config = self.directory.find(session.agent_id)
        reply_id = ids.message_id()
        last = pending[-1].id

        def event(type_: EventType, data: dict[str, Any]) -> Event:
            return Event(
                type=type_, agent=session.agent_id, session_id=session_id, channel=session.channel, data=data
            )

        if config is None:
            await self._fail(session, pending, last, "unknown_agent", f"agent {session.agent_id!r} is gone")
            return
        delivery = self.deliveries.get(provider_of(session) or "")
        if delivery is not None:
            self._spawn(self._typing(delivery, session, pending[-1]))
            prepare = getattr(delivery, "prepare", None)
            if prepare is not None:
                # e.g. transcribe voice notes: inside the turn (after the webhook's 200), and
                # crash-safe, since the messages stay pending until the reply is stored.
                pending = await prepare(session, pending)
        restored: list[MessageRecord] = []
        if session.contact is not None:
            async with self._reading:
                restored = await self._restored_history(session, config)
        turn = Turn(
            turn_id=reply_id,
            session_id=session_id,
            agent_id=session.agent_id,
            agent=config,
            channel=Channel(session.channel),
            contact=None
            if session.contact is None
            else ContactRef(
                channel=Channel(session.contact.channel),
                address=session.contact.address,
                name=session.contact.name,
            ),
            messages=tuple(_chat(m) for m in pending),
            history=tuple(
                _chat(m)
                for m in [*restored, *messages]
                if not m.pending and m.role in _HISTORY_ROLES and not (m.meta or {}).get("hidden")
            ),
            context=session.context,
            prompt=session.prompt or config.prompt,
            prompt_vars=session.prompt_vars,
            metadata=session.meta,
        )
        ephemeral_tools = {t.name for t in config.tools if t.ephemeral}
        tokens = TokenStream(
            self.bus, event(EventType.BOT_TOKEN, {"messageId": reply_id, "inReplyTo": last}), self._flush_s
        )
        parts: list[str] = []
        extra: list[NewMessage] = []
        paragraphs = (
            ParagraphSender(self, session, delivery, reply_id, pending[-1], config.limits.max_reply_messages)
            if delivery is not None and config.progressive and delivery.window_open(session, now_ms())
            else None
        )
        started = time.perf_counter()
        first_token: float | None = None
        try:
            stream = self.agents.agent_for(session.agent_id, config).run(turn)
        except GatewayError as exc:
            await self._fail(session, pending, last, exc.code, exc.message)
            return
        try:
            async for out in stream:
                if isinstance(out, TextDelta):
                    if not out.text:
                        continue
                    if first_token is None:
                        first_token = time.perf_counter()
                    parts.append(out.text)
                    tokens.add(out.text)
                    if paragraphs is not None and "\n" in out.text:
                        await paragraphs.feed("".join(parts))
                elif isinstance(out, ToolCallsRequested):
                    tokens.flush()
                    kept = [c for c in out.calls if c.name not in ephemeral_tools]
                    call_event = event(
                        EventType.TOOL_CALL,
                        {"messageId": reply_id, "toolCalls": [_call_json(c) for c in out.calls]},
                    )
                    if kept:
                        await self.store.append_events([call_event])
                        extra.append(
                            NewMessage(
                                id=ids.message_id(),
                                role="assistant",
                                text=out.text,
                                parts=[{"toolCalls": [_call_json(c) for c in kept]}],
                            )
                        )
                    else:
                        self.bus.publish(call_event)  # ephemeral: live only, never stored
                elif isinstance(out, ToolResultReady):
                    if out.ephemeral or out.name in ephemeral_tools:
                        continue
                    await self.store.append_events(
                        [
                            event(
                                EventType.TOOL_RESULT,
                                {"toolCallId": out.call_id, "name": out.name, "result": out.result},
                            )
                        ]
                    )
                    extra.append(
                        NewMessage(
                            id=ids.message_id(),
                            role="tool",
                            text=_result_text(out.result),
                            parts=[{"toolCallId": out.call_id, "name": out.name}],
                        )
                    )
        except GatewayError as exc:
            tokens.flush()
            await self._fail(session, pending, last, exc.code, exc.message)
            return
        except (asyncio.CancelledError, GeneratorExit):
            tokens.flush()
            # Live only (nothing was stored): tells streaming readers this reply will not finish.
            self.bus.publish(
                event(
                    EventType.BOT_CANCELLED,
                    {"messageId": reply_id, "inReplyTo": last, "answered": [m.id for m in pending]},
                )
            )
            raise
        except Exception as exc:  # a bug in an agent implementation: the session must survive it
            log.exception("agent crashed", extra={"session_id": session_id})
            tokens.flush()
            await self._fail(session, pending, last, "agent_crashed", f"the agent failed: {exc!r}")
            return
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:  # closes the upstream stream promptly on cancel
                await close()
        tokens.flush()
        # A phone call can finish its talk cycle now rather than after the commit below.
        self.bus.publish_to_session(event(EventType.BOT_STREAM_END, {"messageId": reply_id}))
        total = time.perf_counter() - started
        ttft = None if first_token is None else first_token - started
        text = "".join(parts)
        timings: dict[str, float] = {"totalMs": round(total * 1000, 1)}
        if ttft is not None:
            timings["firstTokenMs"] = round(ttft * 1000, 1)
        reply = NewMessage(id=reply_id, role="assistant", text=text, in_reply_to=last)
        outbox: list[OutboxPart] = []
        notices: list[Event] = []
        if delivery is not None and text.strip():
            latest = state[0] if (state := await self.store.turn_state(session_id)) else session
            rest, first_part = (paragraphs.rest(text), paragraphs.count) if paragraphs else (text, 0)
            if not rest.strip():
                pass  # progressive mode already queued every paragraph
            elif delivery.window_open(latest, now_ms()):
                most = config.limits.max_reply_messages
                payloads = delivery.render(
                    latest,
                    rest,
                    pending[-1] if first_part == 0 else None,
                    max_parts=max(1, most - first_part) if most else None,
                )
                total = first_part + len(payloads)
                outbox = [
                    OutboxPart(payload=p, part=first_part + i, parts=total) for i, p in enumerate(payloads)
                ]
            else:
                notices.append(
                    event(
                        EventType.SESSION_ERROR,
                        {
                            "code": "window_closed",
                            "inReplyTo": last,
                            "message": "the 24-hour window is closed: the reply was stored but not sent "
                            "(send a template instead)",
                        },
                    )
                )
        await self.store.record_reply(
            session_id=session_id,
            answered=[m.id for m in pending],
            messages=[*extra, reply],
            outbox=outbox,
            events=[
                event(
                    EventType.BOT_MESSAGE,
                    {
                        "messageId": reply_id,
                        "text": text,
                        "source": "agent",
                        "inReplyTo": last,
                        "answered": [m.id for m in pending],
                        "timings": timings,
                    },
                ),
                *notices,
            ],
        )
        if outbox:
            self.on_outbox()
        agent = session.agent_id
        self.metrics.turns.labels(agent, "ok").inc()
        self.metrics.turn_seconds.labels(agent).observe(total)
        if ttft is not None:
            self.metrics.ttft_seconds.labels(agent).observe(ttft)
        self.metrics.tokens.labels(agent).inc(tokens.count)

    async def _restored_history(self, session: SessionRecord, config: AgentConfig) -> list[MessageRecord]:
        """A returning contact: the agent remembers their last conversations.

        Earlier sessions no longer change, so they are read once per session, not on
        every turn (a phone call has many short turns); an erase empties the cache.
        """
        assert session.contact is not None
        limits = config.limits
        key = (limits.history_conversations, limits.history_messages)
        cached = self._history.get(session.id)
        if cached is not None and cached[0] == key:
            self._history.move_to_end(session.id)
            return cached[1]
        restored = await self.store.previous_messages(
            agent_id=session.agent_id,
            contact_id=session.contact.id,
            before_session=session.id,
            conversations=limits.history_conversations,
            limit=limits.history_messages,
        )
        self._history[session.id] = (key, restored)
        if len(self._history) > HISTORY_CACHE_SESSIONS:
            self._history.popitem(last=False)
        return restored

    async def _give_up(self, session_id: str, _exc: BaseException) -> None:
        """A turn that kept failing on a gateway bug: answer its messages with an error
        instead of leaving the session stuck (the log has the traceback)."""
        session = await self.store.session(session_id)
        if session is None:
            return
        pending = [m for m in await self.store.messages(session_id) if m.pending and m.role == "user"]
        if pending:
            await self._fail(
                session, pending, pending[-1].id, "turn_failed", "the gateway could not run this turn"
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _typing(self, delivery: Delivery, session: SessionRecord, message: MessageRecord) -> None:
        try:
            async with asyncio.timeout(10):
                await delivery.typing(session, message)
        except Exception as exc:  # best effort: a typing indicator never fails a turn
            log.info("typing indicator failed: %r", exc, extra={"session_id": session.id})

    async def _fail(
        self, session: SessionRecord, pending: list[MessageRecord], last: str, code: str, message: str
    ) -> None:
        # The reason reaches feeds and the person's chat: an endpoint URL in it may carry a
        # key (`?api-key=`) or a password; mask them as the logs do.
        message = redact_url(message)
        log.warning("turn failed: %s", message, extra={"session_id": session.id, "message_id": last})
        self.metrics.turns.labels(session.agent_id, "error").inc()
        await self.store.settle_pending(
            session.id,
            [m.id for m in pending],
            [
                Event(
                    type=EventType.SESSION_ERROR,
                    agent=session.agent_id,
                    session_id=session.id,
                    channel=session.channel,
                    data={"code": code, "message": message, "inReplyTo": last},
                )
            ],
        )


def _spec(message: InboundMessage) -> dict[str, Any]:
    return {
        "agent_id": message.agent,
        "channel": message.channel,
        "text": message.text,
        "type": message.type,
        "contact": message.contact,
        "session_id": message.session_id,
        "provider_message_id": message.provider_message_id,
        "parts": message.parts,
        "meta": dict(message.metadata),
        "extra": dict(message.extra) or None,
        "endpoint": message.endpoint,
        "turn": message.turn,
        "message_meta": dict(message.message_meta) or None,
    }


_HISTORY_ROLES = frozenset({"user", "assistant", "tool"})


def _call_json(call: ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _result_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def _chat(m: MessageRecord) -> ChatMessage:
    """A stored message as history for the model."""
    calls: tuple[ToolCall, ...] = ()
    call_id = name = None
    for part in m.parts:
        if isinstance(part, dict):
            if "toolCalls" in part:
                calls = tuple(
                    ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in part["toolCalls"]
                )
            if "toolCallId" in part:
                call_id, name = part["toolCallId"], part.get("name")
    return ChatMessage(
        role=m.role,
        content=m.text,
        source=m.source,
        tool_calls=calls,
        tool_call_id=call_id,
        name=name,
        message_id=m.id,
    )
