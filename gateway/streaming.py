"""A reply while it is being made: live tokens and, in progressive mode, finished paragraphs.

`TokenStream` publishes the agent's deltas as `bot.token` events (coalesced);
`ParagraphSender` queues each finished paragraph for a store-and-forward channel as
soon as it is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.bus.facade import Bus
from gateway.delivery import Delivery
from gateway.events import Event
from gateway.store.outbox import OutboxPart
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import Store
from gateway.types import EventType


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
        store: Store,
        wake_outbox: Callable[[], None],
        session: SessionRecord,
        delivery: Delivery,
        reply_id: str,
        reply_to: MessageRecord,
        most: int = 0,
    ) -> None:
        self._store = store
        self._wake_outbox = wake_outbox
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
        await self._store.outbox.enqueue(session_id=self._session.id, message_id=self._reply_id, parts=queued)
        self._wake_outbox()

    def rest(self, text: str) -> str:
        return text[self._sent :]
