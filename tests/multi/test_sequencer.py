"""The sequencer alone: units from unordered, lossy sources come out in `seq` order."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.bus.sequencer import Sequencer, Topics, Unit


class Log:
    """An event log: seq → payload; `holes` are seqs that were rolled back."""

    def __init__(self, upto: int, holes: frozenset[int] = frozenset()) -> None:
        self.rows = {s: b"e%d" % s for s in range(1, upto + 1) if s not in holes}
        self.reads = 0
        self.down = False

    async def fill(self, after: int, limit: int) -> list[Unit]:
        if self.down:
            raise ConnectionError("database down")
        self.reads += 1
        seqs = sorted(s for s in self.rows if s > after)[:limit]
        return [(s, ("events",), self.rows[s]) for s in seqs]

    async def last_seq(self) -> int:
        if self.down:
            raise ConnectionError("database down")
        return max(self.rows, default=0)


def make(log: Log) -> tuple[Sequencer, list[tuple[Topics, bytes]]]:
    out: list[tuple[Topics, bytes]] = []
    return Sequencer(lambda t, p: out.append((t, p)), log.fill, log.last_seq, retry_seconds=0.01), out


@contextlib.asynccontextmanager
async def running(seq: Sequencer, every: float = 60):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(seq.run(every))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle(cond, timeout: float = 2) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_in_order_units_are_delivered_synchronously_without_store_reads() -> None:
    log = Log(0)
    seq, out = make(log)
    await seq.start()
    log.rows.update({1: b"e1", 2: b"e2"})
    seq.offer(1, ("events",), b"e1")
    seq.offer(None, ("events",), b"token")
    seq.offer(2, ("events", "session:s"), b"e2")
    seq.offer(2, ("events",), b"e2")  # the same event again (its own echo, a redelivery)
    assert out == [(("events",), b"e1"), (("events",), b"token"), (("events", "session:s"), b"e2")]
    assert log.reads == 0 and seq.duplicates == 1


async def test_a_gap_is_filled_from_the_store_and_late_copies_are_dropped() -> None:
    log = Log(0)
    seq, out = make(log)
    await seq.start()
    log.rows.update({s: b"e%d" % s for s in range(1, 5)})
    async with running(seq):
        seq.offer(4, ("events",), b"e4")  # 1..3 were committed first (seq is commit-ordered)
        seq.offer(None, ("events",), b"token")  # stays behind e4: one source's order is kept
        await settle(lambda: len(out) == 5)
        seq.offer(2, ("events",), b"e2")  # the bus brings it late: already delivered
        log.rows[5] = b"e5"
        seq.offer(5, ("events",), b"e5")
        await settle(lambda: len(out) == 6)
    assert [p for _, p in out] == [b"e1", b"e2", b"e3", b"e4", b"token", b"e5"]
    assert seq.filled == 4 and seq.duplicates >= 2  # e4 came with the fill; its bus copy and e2 dropped


async def test_rolled_back_seqs_are_skipped_not_waited_for() -> None:
    log = Log(5, holes=frozenset({2, 3}))
    seq, out = make(log)
    seq.high = 0
    async with running(seq):
        seq.offer(5, ("events",), b"e5")
        await settle(lambda: len(out) == 3)
        seq.offer(7, ("events",), b"e7")  # 6 was rolled back too; the store has nothing below 7
        await settle(lambda: len(out) == 4)
    assert [p for _, p in out] == [b"e1", b"e4", b"e5", b"e7"]


async def test_a_lost_last_event_arrives_by_the_timer() -> None:
    log = Log(3)
    seq, out = make(log)
    seq.high = 1
    async with running(seq, every=0.05):
        await settle(lambda: len(out) == 2)  # nothing on the bus at all
    assert [p for _, p in out] == [b"e2", b"e3"]


async def test_store_down_keeps_order_and_resumes_when_it_returns() -> None:
    log = Log(4)
    seq, out = make(log)
    seq.high = 1
    log.down = True
    async with running(seq):
        seq.offer(4, ("events",), b"e4")
        seq.offer(None, ("events",), b"token")
        await asyncio.sleep(0.1)
        assert out == []  # nothing may overtake the gap
        log.down = False
        await settle(lambda: len(out) == 4)
    assert [p for _, p in out] == [b"e2", b"e3", b"e4", b"token"]
