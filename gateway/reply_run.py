"""The reply run: one turn of a session, from its pending messages to the stored reply.

Build what the agent reads (the pending messages, the conversation so far, a returning
contact's earlier conversations), stream its answer live (`TokenStream`; progressive
mode queues finished paragraphs), then store the reply, the tool calls and results,
the answered messages and (store-and-forward channels) the outbox parts in one write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway import ids
from gateway.agents.base import TextDelta, ToolCallsRequested, ToolResultReady, Turn
from gateway.delivery import provider_of
from gateway.errors import GatewayError
from gateway.events import ContactRef, Event, now_ms
from gateway.history import call_json, chat_message, history, result_text
from gateway.settings import AgentConfig
from gateway.store.outbox import OutboxPart
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import NewMessage
from gateway.streaming import ParagraphSender, TokenStream
from gateway.types import Channel, EventType

if TYPE_CHECKING:
    from gateway.replies import Replies

log = logging.getLogger("gateway.conversations")


class ReplyRun:
    """One turn: build what the agent reads, stream its answer, store the reply."""

    def __init__(
        self,
        service: Replies,
        session: SessionRecord,
        messages: list[MessageRecord],
        pending: list[MessageRecord],
        config: AgentConfig,
    ) -> None:
        self.s = service
        self.session = session
        self.messages = messages
        self.pending = pending
        self.config = config
        self.reply_id = ids.message_id()
        self.last = pending[-1].id
        self.delivery = service.deliveries.get(provider_of(session) or "")
        self.parts: list[str] = []
        self.extra: list[NewMessage] = []  # tool calls and results, stored before the reply
        self.first_token: float | None = None
        self.paragraphs: ParagraphSender | None = None

    def event(self, type_: EventType, data: dict[str, Any]) -> Event:
        s = self.session
        return Event(type=type_, agent=s.agent_id, session_id=s.id, channel=s.channel, data=data)

    async def run(self) -> None:
        if self.delivery is not None:
            self.s._spawn(self.s._typing(self.delivery, self.session, self.pending[-1]))
            prepare = getattr(self.delivery, "prepare", None)
            if prepare is not None:
                # e.g. transcribe voice notes: inside the turn (after the webhook's 200), and
                # crash-safe, since the messages stay pending until the reply is stored.
                self.pending = await prepare(self.session, self.pending)
        turn = await self._turn()
        tokens = TokenStream(
            self.s.bus,
            self.event(EventType.BOT_TOKEN, {"messageId": self.reply_id, "inReplyTo": self.last}),
            self.s._flush_s,
        )
        started = time.perf_counter()
        if not await self._stream(turn, tokens):
            return
        tokens.flush()
        # A phone call can finish its talk cycle now rather than after the commit below.
        self.s.bus.publish_to_session(self.event(EventType.BOT_STREAM_END, {"messageId": self.reply_id}))
        total = time.perf_counter() - started
        ttft = None if self.first_token is None else self.first_token - started
        await self._store_reply(total, ttft)
        agent, metrics = self.session.agent_id, self.s.metrics
        metrics.turns.labels(agent, "ok").inc()
        metrics.turn_seconds.labels(agent).observe(total)
        if ttft is not None:
            metrics.ttft_seconds.labels(agent).observe(ttft)
        metrics.tokens.labels(agent).inc(tokens.count)

    async def _turn(self) -> Turn:
        session, config = self.session, self.config
        restored: list[MessageRecord] = []
        if session.contact is not None:
            async with self.s._reading:
                restored = await self.s.earlier.of(session, config)
        contact = session.contact
        return Turn(
            turn_id=self.reply_id,
            session_id=session.id,
            agent_id=session.agent_id,
            agent=config,
            channel=Channel(session.channel),
            contact=None
            if contact is None
            else ContactRef(channel=Channel(contact.channel), address=contact.address, name=contact.name),
            messages=tuple(chat_message(m) for m in self.pending),
            history=history([*restored, *self.messages]),
            context=session.context,
            prompt=session.prompt or config.prompt,
            prompt_vars=session.prompt_vars,
            metadata=session.meta,
        )

    async def _stream(self, turn: Turn, tokens: TokenStream) -> bool:
        """Run the agent to its end; False when the turn ended in an error (already stored)."""
        s, session, delivery = self.s, self.session, self.delivery
        paragraphs = (
            ParagraphSender(
                s.store,
                lambda: s.on_outbox(),
                session,
                delivery,
                self.reply_id,
                self.pending[-1],
                self.config.limits.max_reply_messages,
            )
            if delivery is not None and self.config.progressive and delivery.window_open(session, now_ms())
            else None
        )
        self.paragraphs = paragraphs
        try:
            stream = s.agents.agent_for(session.agent_id, self.config).run(turn)
        except GatewayError as exc:
            await s._fail(session, self.pending, self.last, exc.code, exc.message)
            return False
        try:
            async for out in stream:
                if isinstance(out, TextDelta):
                    if not out.text:
                        continue
                    if self.first_token is None:
                        self.first_token = time.perf_counter()
                    self.parts.append(out.text)
                    tokens.add(out.text)
                    if paragraphs is not None and "\n" in out.text:
                        await paragraphs.feed("".join(self.parts))
                elif isinstance(out, ToolCallsRequested):
                    tokens.flush()
                    await self._tool_calls(out)
                elif isinstance(out, ToolResultReady):
                    await self._tool_result(out)
        except GatewayError as exc:
            tokens.flush()
            await s._fail(session, self.pending, self.last, exc.code, exc.message)
            return False
        except (asyncio.CancelledError, GeneratorExit):
            tokens.flush()
            # Live only (nothing was stored): tells streaming readers this reply will not finish.
            answered = [m.id for m in self.pending]
            s.bus.publish(
                self.event(
                    EventType.BOT_CANCELLED,
                    {"messageId": self.reply_id, "inReplyTo": self.last, "answered": answered},
                )
            )
            raise
        except Exception as exc:  # a bug in an agent implementation: the session must survive it
            log.exception("agent crashed", extra={"session_id": session.id})
            tokens.flush()
            await s._fail(session, self.pending, self.last, "agent_crashed", f"the agent failed: {exc!r}")
            return False
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:  # closes the upstream stream promptly on cancel
                await close()
        return True

    def _ephemeral(self) -> set[str]:
        return {t.name for t in self.config.tools if t.ephemeral}

    async def _tool_calls(self, out: ToolCallsRequested) -> None:
        kept = [c for c in out.calls if c.name not in self._ephemeral()]
        call_event = self.event(
            EventType.TOOL_CALL, {"messageId": self.reply_id, "toolCalls": [call_json(c) for c in out.calls]}
        )
        if not kept:
            self.s.bus.publish(call_event)  # ephemeral: live only, never stored
            return
        await self.s.store.append_events([call_event])
        self.extra.append(
            NewMessage(
                id=ids.message_id(),
                role="assistant",
                text=out.text,
                parts=[{"toolCalls": [call_json(c) for c in kept]}],
            )
        )

    async def _tool_result(self, out: ToolResultReady) -> None:
        if out.ephemeral or out.name in self._ephemeral():
            return
        await self.s.store.append_events(
            [
                self.event(
                    EventType.TOOL_RESULT, {"toolCallId": out.call_id, "name": out.name, "result": out.result}
                )
            ]
        )
        self.extra.append(
            NewMessage(
                id=ids.message_id(),
                role="tool",
                text=result_text(out.result),
                parts=[{"toolCallId": out.call_id, "name": out.name}],
            )
        )

    async def _store_reply(self, total: float, ttft: float | None) -> None:
        text = "".join(self.parts)
        timings: dict[str, float] = {"totalMs": round(total * 1000, 1)}
        if ttft is not None:
            timings["firstTokenMs"] = round(ttft * 1000, 1)
        outbox, notices = await self._outbox(text)
        answered = [m.id for m in self.pending]
        await self.s.store.record_reply(
            session_id=self.session.id,
            answered=answered,
            messages=[
                *self.extra,
                NewMessage(id=self.reply_id, role="assistant", text=text, in_reply_to=self.last),
            ],
            outbox=outbox,
            events=[
                self.event(
                    EventType.BOT_MESSAGE,
                    {
                        "messageId": self.reply_id,
                        "text": text,
                        "source": "agent",
                        "inReplyTo": self.last,
                        "answered": answered,
                        "timings": timings,
                    },
                ),
                *notices,
            ],
        )
        if outbox:
            self.s.on_outbox()

    async def _outbox(self, text: str) -> tuple[list[OutboxPart], list[Event]]:
        """A store-and-forward channel's parts for the reply (what progressive mode left)."""
        delivery, paragraphs = self.delivery, self.paragraphs
        if delivery is None or not text.strip():
            return [], []
        state = await self.s.store.turn_state(self.session.id)
        latest = state[0] if state else self.session
        rest, first_part = (paragraphs.rest(text), paragraphs.count) if paragraphs else (text, 0)
        if not rest.strip():
            return [], []  # progressive mode already queued every paragraph
        if not delivery.window_open(latest, now_ms()):
            notice = self.event(
                EventType.SESSION_ERROR,
                {
                    "code": "window_closed",
                    "inReplyTo": self.last,
                    "message": "the 24-hour window is closed: the reply was stored but not sent "
                    "(send a template instead)",
                },
            )
            return [], [notice]
        most = self.config.limits.max_reply_messages
        payloads = delivery.render(
            latest,
            rest,
            self.pending[-1] if first_part == 0 else None,
            max_parts=max(1, most - first_part) if most else None,
        )
        count = first_part + len(payloads)
        return [OutboxPart(payload=p, part=first_part + i, parts=count) for i, p in enumerate(payloads)], []
