"""Fan-out of the global topic to many local readers, filtered before the push.

One backend subscription per process reads the global topic; each event's header is
decoded once (`codec.decode_envelope`) and the envelope is pushed only to the readers
that want it, found through an index by (agent, event type). A reader is therefore
woken only for its own events: a thousand feeds over a hundred tenants cost one
header split per event plus one push per delivery, instead of a thousand wake-ups
and header splits per event (bench/README.md, "SSE fan-out").

Readers that follow agents appearing later (an unfiltered feed: its scope decides)
carry a `late` predicate. It is asked once per reader when an agent is first seen on
the bus and again whenever the directory changes that agent (`agent_changed`), so
a reader never keeps an agent its scope no longer sees.

The backend seam (`bus/base.py`) is unchanged: this is a facade-side consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.bus.base import SubscriptionClosed
from gateway.bus.facade import Bus
from gateway.codec import Envelope, decode_envelope

log = logging.getLogger("gateway.bus.fanout")

ANY = "*"  # index key: every type but `bot.token` (tokens are asked for explicitly)
TOKEN = "bot.token"
HUB_BUFFER = 1_000_000  # the hub drains at once; only a stalled loop could fill this


@dataclass(frozen=True, kw_only=True, slots=True)
class Interest:
    """What a reader wants: events of these agents, of these types (None: any but tokens)."""

    agents: frozenset[str]
    types: frozenset[str] | None = None
    tokens: bool = False
    late: Callable[[str], bool] | None = None  # follows agents its scope sees later

    def keys(self, agent: str) -> list[tuple[str, str]]:
        if self.types is not None:
            return [(agent, t) for t in self.types if t != TOKEN or self.tokens]
        return [(agent, ANY), (agent, TOKEN)] if self.tokens else [(agent, ANY)]


class Inbox:
    """The bounded buffer of one reader. Never blocks the hub: a reader that falls
    `maxsize` envelopes behind is closed as overflowed (it resumes with its last seq)."""

    __slots__ = ("_items", "_maxsize", "_waiter", "agents", "closed", "interest", "overflowed")

    def __init__(self, interest: Interest, maxsize: int) -> None:
        self._items: deque[Envelope] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.overflowed = False
        self.interest = interest
        self.agents: set[str] = set()  # agents this reader is indexed under

    def push(self, env: Envelope) -> None:
        if self.closed:
            return
        if len(self._items) >= self._maxsize:
            self.overflowed = self.closed = True
            self._items.clear()
        else:
            self._items.append(env)
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        """Also used by a feed's keeper to have the reader look at its clock (pings)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def get_nowait(self) -> Envelope | None:
        return self._items.popleft() if self._items else None

    async def wait(self) -> None:
        """Return when something was pushed, the inbox closed, or `wake()` was called."""
        if self._items or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def get(self) -> Envelope:
        while True:
            env = self.get_nowait()
            if env is not None:
                return env
            if self.closed:
                raise SubscriptionClosed(self.overflowed)
            await self.wait()


class Fanout:
    """The process's one reader of the global topic, dispatching to indexed inboxes."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._index: dict[tuple[str, str], set[Inbox]] = {}
        self._late: set[Inbox] = set()
        self._seen: set[str] = set()  # agents the late readers were asked about
        self._inboxes: set[Inbox] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    # ------------------------------------------------------------- readers

    @contextlib.asynccontextmanager
    async def open(self, interest: Interest, maxsize: int) -> AsyncIterator[Inbox]:
        """An inbox that receives, from now on, every published event the interest wants."""
        await self._ensure_running()
        inbox = Inbox(interest, maxsize)
        for agent in interest.agents:
            self._add(inbox, agent)
        if interest.late is not None:
            self._late.add(inbox)
        self._inboxes.add(inbox)
        try:
            yield inbox
        finally:
            inbox.close()
            self._remove(inbox)

    def follow(self, inbox: Inbox, agent: str) -> None:
        """From now on, also push `agent`'s events to `inbox` (an agent socket registers one)."""
        if agent not in inbox.agents and not inbox.closed:
            self._add(inbox, agent)

    def agent_changed(self, agent: str) -> None:
        """The directory added or changed `agent`: ask the late readers about it again."""
        for inbox in self._late:
            visible = inbox.interest.late is not None and inbox.interest.late(agent)
            if visible and agent not in inbox.agents:
                self._add(inbox, agent)
            elif not visible and agent in inbox.agents:
                self._drop(inbox, agent)
        self._seen.add(agent)

    def reader_count(self) -> int:
        return len(self._inboxes)

    def _add(self, inbox: Inbox, agent: str) -> None:
        inbox.agents.add(agent)
        for key in inbox.interest.keys(agent):
            self._index.setdefault(key, set()).add(inbox)

    def _drop(self, inbox: Inbox, agent: str) -> None:
        inbox.agents.discard(agent)
        for key in inbox.interest.keys(agent):
            subs = self._index.get(key)
            if subs is not None:
                subs.discard(inbox)
                if not subs:
                    del self._index[key]

    def _remove(self, inbox: Inbox) -> None:
        for agent in tuple(inbox.agents):
            self._drop(inbox, agent)
        self._late.discard(inbox)
        self._inboxes.discard(inbox)

    # ----------------------------------------------------------------- hub

    async def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._ready), name="bus-fanout")
        assert self._ready is not None
        await self._ready.wait()  # subscribed before the reader replays: no gap

    async def _run(self, ready: asyncio.Event) -> None:
        overflowed = False
        try:
            async with self._bus.subscribe_all(HUB_BUFFER) as sub:
                ready.set()
                while True:
                    try:
                        raw: bytes | None = await sub.get()
                    except SubscriptionClosed as exc:
                        overflowed = exc.overflowed
                        return
                    while raw is not None:  # drain what queued up before yielding
                        try:
                            self.dispatch(decode_envelope(raw))
                        except Exception:  # one bad envelope must not stop every feed
                            log.exception("bus envelope could not be dispatched")
                        raw = sub.get_nowait()
        finally:
            ready.set()
            # The bus went away (shutdown: readers just end) or this hub fell behind
            # (readers end as overflowed and resume from the store with their last seq).
            for inbox in tuple(self._inboxes):
                inbox.overflowed = inbox.overflowed or overflowed
                inbox.close()

    def dispatch(self, env: Envelope) -> None:
        agent = env.agent
        if agent not in self._seen and self._late:
            self.agent_changed(agent)
        index = self._index
        exact = index.get((agent, env.type))
        if exact:
            for inbox in exact:
                inbox.push(env)
        if env.type != TOKEN:
            anyt = index.get((agent, ANY))
            if anyt:
                for inbox in anyt:
                    inbox.push(env)
