"""Puts the events of several unordered, lossy sources back into one `seq` order.

With several instances, each publishes its own commits; the copies reach every
instance through the network in no particular order across publishers, and a bus
may drop some (a reconnect loses what was sent meanwhile). The event log is the
truth: `seq` is commit-ordered (store/sql.py holds an advisory lock from the
append to the commit), so once any event with `seq = n` is seen, every event
below `n` that will ever exist is already committed and readable. A gap is
therefore filled by one store read, never by waiting; a `seq` the store does not
have below a seen one was rolled back and never will be.

The sequencer hands each unit (the topics an event goes to, and its encoded
bytes) to `deliver` exactly once, in `seq` order, with no gap. Units without a
`seq` (token deltas, live-only signals) pass straight through: they are not in
the store, so they can be lost but never reordered within one publisher.

The fast path is synchronous: an in-order unit offered while nothing is queued is
delivered at once. Anything else goes through one worker task, so a store read in
progress never lets a later unit overtake it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.bus")

Topics = tuple[str, ...]
# What the event log returns for a gap: (seq, topics, encoded event), in seq order.
Unit = tuple[int, Topics, bytes]
Fill = Callable[[int, int], Awaitable[list[Unit]]]  # (after seq, limit) → units
LastSeq = Callable[[], Awaitable[int]]

FILL_BATCH = 500


class Sequencer:
    def __init__(
        self,
        deliver: Callable[[Topics, bytes], None],
        fill: Fill,
        last_seq: LastSeq,
        *,
        max_pending: int = 50_000,
        retry_seconds: float = 0.5,
    ) -> None:
        self._deliver = deliver
        self._fill = fill
        self._last_seq = last_seq
        self._pending: deque[tuple[int | None, Topics, bytes]] = deque()
        self._max_pending = max_pending
        self._retry = retry_seconds
        self._wake = asyncio.Event()
        self._busy = False
        self._catch_up = False
        self.high: int | None = None  # the last seq delivered; None until started
        # Counters for metrics and tests.
        self.filled = 0  # units delivered from the store (the bus had not brought them in time)
        self.duplicates = 0
        self.dropped = 0

    async def start(self) -> None:
        """Everything committed so far is history: live delivery starts after it."""
        self.high = await self._last_seq()

    def offer(self, seq: int | None, topics: Topics, payload: bytes) -> None:
        """A unit from any source, in that source's order. Never blocks."""
        high = self.high
        if high is None:
            if seq is None:
                self._deliver(topics, payload)
            return  # not started: nobody can be subscribed yet
        if not self._pending and not self._busy:
            if seq is None:
                self._deliver(topics, payload)
                return
            if seq <= high:
                self.duplicates += 1
                return
            if seq == high + 1:
                self.high = seq
                self._deliver(topics, payload)
                return
        if len(self._pending) >= self._max_pending:
            # Falling this far behind means the store is unreachable: whatever has a seq
            # comes back from the store later; live-only units are lost, as on any bus drop.
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((seq, topics, payload))
        self._wake.set()

    def catch_up(self) -> None:
        """Ask for a store read: the bus may have lost something (reconnect, timer)."""
        self._catch_up = True
        self._wake.set()

    async def run(self, every: float) -> None:
        """The worker: drains what could not go the fast way; checks the store `every` s."""
        while True:
            try:
                async with asyncio.timeout(every):
                    await self._wake.wait()
            except TimeoutError:
                self._catch_up = True
            self._wake.clear()
            self._busy = True
            try:
                await self._drain()
            finally:
                self._busy = False

    async def _drain(self) -> None:
        while self._pending or self._catch_up:
            try:
                if self._catch_up:
                    self._catch_up = False
                    await self._fill_to(await self._last_seq())
                while self._pending:
                    seq, topics, payload = self._pending[0]
                    if seq is not None:
                        assert self.high is not None
                        if seq > self.high + 1:
                            await self._fill_to(seq - 1)
                        if seq <= self.high:
                            self.duplicates += 1
                            self._pending.popleft()
                            continue
                        self.high = seq  # what the store did not have below it was rolled back
                    self._pending.popleft()
                    self._deliver(topics, payload)
            except Exception as exc:  # the store is unreachable: keep the order, try again
                log.warning("bus: cannot read the event log to fill a gap (%s); retrying", type(exc).__name__)
                self._catch_up = True
                await asyncio.sleep(self._retry)

    async def _fill_to(self, target: int) -> None:
        assert self.high is not None
        while self.high < target:
            batch = await self._fill(self.high, FILL_BATCH)
            for seq, topics, payload in batch:
                if seq > self.high:
                    self.high = seq
                    self.filled += 1
                    self._deliver(topics, payload)
            if len(batch) < FILL_BATCH:
                return
