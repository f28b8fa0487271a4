"""The store's one writer: group commit (PERFORMANCE.md, lesson 1).

Every write of the process is a *job*, an async function of the write transaction.
Callers queue jobs; one writer task takes whatever has queued up (at most
`MAX_BATCH` jobs, outbox jobs first) and runs them one after another in ONE
transaction, commits, hands the batch's new events to `on_commit` (the bus), and
only then answers each caller with its job's result. So:

- a caller is answered only after its own commit (a webhook's 200 means stored);
- `seq` is commit-ordered: the batch appends its events in one transaction; on
  PostgreSQL it takes the transaction-level advisory lock once, held to the commit;
  and batches commit one after another, so the bus sees this process's events in
  `seq` order;
- jobs of the same *group* (e.g. every queued inbound message) are merged into one
  set-wise call (`Group.run_many`): 64 webhooks cost a handful of statements.

Jobs in one batch were queued concurrently (none of their callers has been answered),
so any order among them is a valid serialization; merging a group reorders nothing a
caller could observe.

A job that raises spoils the transaction: the batch is rolled back and every job is run
again alone, in its own transaction, so the failing one gets its error and the others
commit. Jobs must therefore have no side effects outside the transaction (they build
rows and events; they never publish, send or cache): what must follow the commit is
registered with `after_commit`.

A caller cancelled while its job waits in the queue takes the job out; once the job
has started, the caller waits for the commit before it unwinds, so "the caller is gone"
always means "its write happened, or never will" (`ConversationService.interrupt`
relies on this after stopping a turn).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.events import Event

log = logging.getLogger("gateway.store.writer")

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 (an item of a group)
R = TypeVar("R")
I_contra = TypeVar("I_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

MAX_BATCH = 64
EVENT_LOCK_KEY = 7_270_001

Job = Callable[[AsyncSession], Awaitable[T]]


class Group(Protocol[I_contra, R_co]):
    """Jobs that merge: `run_many` does for all queued items what each would do alone.

    It returns one result per item, in order. Items of one caller stay together (they
    are one all-or-nothing unit when the batch is run again job by job).
    """

    async def run_many(self, s: AsyncSession, items: Sequence[I_contra]) -> Sequence[R_co]: ...


@dataclass(eq=False)
class _Queued(Generic[T]):
    future: asyncio.Future[T]
    job: Job[T] | None = None
    group: Group[Any, Any] | None = None
    items: Sequence[Any] = ()
    started: bool = False
    dropped: bool = False
    result: Any = field(default=None)


class Writer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        postgres: bool,
        on_commit: Callable[[list[Event]], None] | None = None,
        max_batch: int = MAX_BATCH,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._pg = postgres
        self.on_commit = on_commit
        self._after_batch = after_batch  # upkeep once a batch committed (SQLite checkpoints)
        self._max_batch = max_batch
        self._urgent: deque[_Queued[Any]] = deque()
        self._normal: deque[_Queued[Any]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._admissions: deque[asyncio.Future[None]] = deque()
        self._inbound = 0  # grouped items (inbound messages) waiting in the queues
        self.batches = 0  # committed batches (for tests and metrics)
        self.jobs = 0

    # ------------------------------------------------------------------ callers

    async def run(self, job: Job[T], *, urgent: bool = False) -> T:
        """Run `job` in the next batch's transaction; its result once that has committed."""
        return await self._submit(_Queued(self._future(), job=job), urgent)

    async def run_grouped(self, group: Group[I, R], items: Sequence[I], *, urgent: bool = False) -> list[R]:
        """Items merged with every other queued item of the same group into one call."""
        result: list[R] = await self._submit(_Queued(self._future(), group=group, items=items), urgent)
        return result

    async def admit(self) -> None:
        """Wait while inbound messages queue up at the writer: work that can wait (a
        store-and-forward reply) lets acknowledgements go first.

        Starvation-free: while inbound messages keep coming, each commit admits one
        waiter; once none is queued, every waiter goes.
        """
        if not self._inbound_queued():
            return
        waiter: asyncio.Future[None] = self._future()
        self._admissions.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._admissions:
                self._admissions.remove(waiter)
            raise

    def _inbound_queued(self) -> bool:
        return self._inbound > 0

    def _release_admissions(self) -> None:
        count = 1 if self._inbound_queued() else len(self._admissions)
        while count and self._admissions:
            waiter = self._admissions.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, queued: _Queued[T], urgent: bool) -> T:
        self._ensure_running()
        (self._urgent if urgent else self._normal).append(queued)
        if queued.group is not None:
            self._inbound += 1
        assert self._wake is not None
        self._wake.set()
        try:
            return await asyncio.shield(queued.future)
        except asyncio.CancelledError:
            if not queued.started:
                queued.dropped = True
                raise
            # Started: it commits or fails as one piece; wait for that before unwinding.
            while not queued.future.done():
                try:
                    await asyncio.shield(queued.future)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            raise

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._loop(), name="store-writer")

    # ------------------------------------------------------------------ the writer

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            if not self._urgent and not self._normal:
                wake.clear()
                await wake.wait()
            batch = self._take()
            if batch:
                await self._commit(batch)
            if self._admissions:
                self._release_admissions()

    def _take(self) -> list[_Queued[Any]]:
        batch: list[_Queued[Any]] = []
        for queue in (self._urgent, self._normal):
            while queue and len(batch) < self._max_batch:
                queued = queue.popleft()
                if queued.group is not None:
                    self._inbound -= 1
                if queued.dropped or queued.future.done():
                    continue
                queued.started = True
                batch.append(queued)
        return batch

    async def _commit(self, batch: list[_Queued[Any]]) -> None:
        try:
            events, hooks = await self._transaction(batch)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                for queued in batch:  # the writer is closing: nothing of the batch was committed
                    if not queued.future.done():
                        queued.future.cancel()
                raise
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One job spoiled the transaction: run each alone, so only that one fails.
            for queued in batch:
                await self._commit([queued])
            return
        self.batches += 1
        self.jobs += len(batch)
        for hook in hooks:  # in commit order, before any caller hears back
            try:
                hook()
            except Exception:
                log.exception("an after-commit hook failed")
        if events and self.on_commit is not None:
            try:
                self.on_commit(events)
            except Exception:  # the bus is lossy by design; readers resume from the store
                log.exception("publishing committed events failed")
        for queued in batch:
            if not queued.future.done():
                queued.future.set_result(queued.result)
        if self._after_batch is not None:
            self._after_batch()
        if self._after_batch is not None:
            self._after_batch()

    async def _transaction(self, batch: list[_Queued[Any]]) -> tuple[list[Event], list[Callable[[], None]]]:
        async with self._sessions.begin() as s:
            s.info["postgres"] = self._pg
            # PostgreSQL: the event-log lock first, before any row is written. Taken at the
            # first append instead, two processes deadlock: one holds it and waits for a row
            # the other inserted (the same webhook delivered to both), which waits for it.
            # Held from the start, a batch also sees every row another process committed
            # before it (the dedupe of a concurrent redelivery finds it; no unique violation).
            await lock_event_log(s)
            groups: dict[int, list[_Queued[Any]]] = {}
            for queued in batch:
                if queued.group is not None:
                    groups.setdefault(id(queued.group), []).append(queued)
            done_groups: set[int] = set()
            for queued in batch:
                if queued.group is None:
                    assert queued.job is not None
                    queued.result = await queued.job(s)
                    continue
                key = id(queued.group)
                if key in done_groups:
                    continue
                done_groups.add(key)
                members = groups[key]
                items = [item for m in members for item in m.items]
                results = await queued.group.run_many(s, items)
                at = 0
                for m in members:
                    m.result, at = list(results[at : at + len(m.items)]), at + len(m.items)
            events: list[Event] = s.info.get("events", [])
            hooks: list[Callable[[], None]] = s.info.get("after_commit", [])
        return events, hooks


def _settle(queued: _Queued[Any], exc: BaseException) -> None:
    if not queued.future.done():
        queued.future.set_exception(exc)


def after_commit(s: AsyncSession, hook: Callable[[], None]) -> None:
    """Run `hook` once the job's transaction has committed (never if it rolls back).

    Hooks run in commit order, before the callers are answered: in-memory state that
    mirrors the database (gateway/store/hot.py) is changed only by what committed.
    """
    s.info.setdefault("after_commit", []).append(hook)


async def lock_event_log(s: AsyncSession) -> None:
    """PostgreSQL: serialize event appends until the commit (once per transaction)."""
    if s.info.get("postgres") and not s.info.get("event_lock"):
        await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOCK_KEY})
        s.info["event_lock"] = True
