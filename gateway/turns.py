"""The per-session turn runner: serial, coalescing, cancellable, retried, bounded.

`submit(session)` after a user message is committed. At most one worker task runs
per session; a submit during a running turn only marks the session dirty, and the
worker runs another turn afterwards that picks up every message that arrived
meanwhile (answered together). The check "dirty?" and the worker's removal happen
without an await in between, so a submit can never fall into the gap.

A turn that raises (the agent's own failures are handled inside the turn; what
escapes is the infrastructure: a lost database connection, a pool timeout) leaves
its messages pending in the store, so it is tried again after a backoff instead of
waiting for a restart: forever for infrastructure errors (the database comes back),
`MAX_BUG_RETRIES` times for anything else, after which `give_up` answers the
messages with an error so the session is not stuck.

At most `max_concurrent` turns run at once; the others wait their turn. A burst of
thousands of new contacts would otherwise start thousands of turns that fight over
the event loop and the connection pool until some time out.

Several instances: a worker first claims the session's turn lease (gateway/turn_lease.py)
so that one process runs the session's turns at a time; a claim another process holds
marks the session for that owner's next turn instead. The worker lets the lease go when
it has nothing left to run, and runs once more if another process marked it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.turn_lease import LocalLeases, TurnLeases, TurnSuperseded

log = logging.getLogger("gateway.turns")

RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
MAX_BUG_RETRIES = 3
TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,
    DBAPIError,
    PoolTimeout,
    OSError,
    TimeoutError,
    ConnectionError,
)

RunTurn = Callable[[str], Coroutine[Any, Any, None]]
Place = Callable[[str], Coroutine[Any, Any, bool]]
GiveUp = Callable[[str, BaseException], Coroutine[Any, Any, None]]
Gate = Callable[[str], contextlib.AbstractAsyncContextManager[None]]


async def _nothing(_session_id: str, _exc: BaseException) -> None:
    return None


class TurnRunner:
    def __init__(
        self,
        run_turn: RunTurn,
        *,
        give_up: GiveUp = _nothing,
        max_concurrent: int = 512,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
        gate: Gate | None = None,
        leases: TurnLeases | None = None,
    ) -> None:
        self._run_turn = run_turn
        self.leases: TurnLeases = leases if leases is not None else LocalLeases()
        # Several instances: whether a session's turns run here (gateway/placement.py).
        self.place: Place | None = None
        self._gate = gate  # e.g. a tenant's cap, waited for before a gateway-wide slot
        self._give_up = give_up
        self._slots = asyncio.Semaphore(max_concurrent)
        self._retry_base = retry_base_seconds
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._current: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._closing = False

    def submit(self, session_id: str) -> None:
        if self._closing:
            return  # picked up from the store after restart
        self._dirty.add(session_id)
        if session_id not in self._workers:
            task = asyncio.create_task(self._worker(session_id), name=f"turns:{session_id}")
            self._workers[session_id] = task

    def queued(self, session_id: str) -> bool:
        """A worker exists for the session here (claiming, waiting for a slot, or running)."""
        return session_id in self._workers

    def busy(self, session_id: str) -> bool:
        return session_id in self._current

    async def _worker(self, session_id: str) -> None:
        try:
            while await self._claim(session_id):
                await self._turns(session_id)
                if self._closing:
                    return  # shutdown lets every lease go at once
                try:
                    again = await self.leases.release(session_id)
                except Exception as exc:  # the lease expires by itself; others adopt the rest
                    log.warning("could not release a turn lease: %r", exc, extra={"session_id": session_id})
                    return
                if again:
                    self._dirty.add(session_id)  # another process committed a message meanwhile
                elif session_id not in self._dirty:
                    return
                # else: a local submit came while we let go; claim again (no row: ours).
        finally:
            self._workers.pop(session_id, None)

    async def _claim(self, session_id: str) -> bool:
        """Ours to run: claim the lease (held already when `release` said run again)."""
        if self._closing or session_id not in self._dirty:
            return False
        if isinstance(self.leases, LocalLeases):
            return True
        try:
            if self.place is not None and not await self.place(session_id):
                self._dirty.discard(session_id)  # the instance with the agent's process runs it
                return False
            if await self.leases.claim(session_id):
                return True
        except Exception as exc:  # the database is away: try again later, like a failed turn
            self._dirty.discard(session_id)
            await self._failed(session_id, exc)
            return False
        self._dirty.discard(session_id)  # marked for the owner's next turn
        return False

    async def _turns(self, session_id: str) -> None:
        while session_id in self._dirty and not self._closing:
            self._dirty.discard(session_id)
            async with self._gate(session_id) if self._gate else contextlib.nullcontext(), self._slots:
                if self._closing:
                    return
                turn = asyncio.create_task(self._run_turn(session_id), name=f"turn:{session_id}")
                self._current[session_id] = turn
                try:
                    await turn
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the worker itself is being cancelled, not just this turn
                except TurnSuperseded:
                    log.warning("turn superseded by another instance's", extra={"session_id": session_id})
                except Exception as exc:
                    await self._failed(session_id, exc)
                else:
                    self._failures.pop(session_id, None)
                finally:
                    self._current.pop(session_id, None)

    async def _failed(self, session_id: str, exc: Exception) -> None:
        attempt = self._failures.get(session_id, 0) + 1
        self._failures[session_id] = attempt
        transient = isinstance(exc, TRANSIENT)
        if not transient and attempt > MAX_BUG_RETRIES:
            log.exception("turn failed %d times; giving up", attempt, extra={"session_id": session_id})
            self._failures.pop(session_id, None)
            try:
                await self._give_up(session_id, exc)
            except Exception:
                log.exception("could not record the failed turn", extra={"session_id": session_id})
            return
        delay = min(RETRY_MAX_SECONDS, self._retry_base * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
        log.warning(
            "turn crashed (%r); retry %d in %.1f s",
            exc,
            attempt,
            delay,
            exc_info=not transient,
            extra={"session_id": session_id},
        )
        self._retry_later(session_id, delay)

    def _retry_later(self, session_id: str, delay: float) -> None:
        old = self._retries.pop(session_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._retries.pop(session_id, None)
            self.submit(session_id)

        self._retries[session_id] = asyncio.get_running_loop().call_later(delay, fire)

    def cancel(self, session_id: str) -> bool:
        """Cancel the running turn of a session (the next queued turn still runs)."""
        turn = self._current.get(session_id)
        if turn is None or turn.done():
            return False
        turn.cancel()
        return True

    async def stop(self, session_id: str, wait_seconds: float = 5.0) -> None:
        """Cancel the running turn and wait until it has unwound (its `finally` blocks ran)."""
        turn = self._current.get(session_id)
        if turn is None or turn.done():
            return
        turn.cancel()
        await asyncio.wait([turn], timeout=wait_seconds)

    def forget(self, session_id: str) -> None:
        """Cancel the running turn and drop anything queued (the session ended)."""
        self._dirty.discard(session_id)
        self._failures.pop(session_id, None)
        retry = self._retries.pop(session_id, None)
        if retry is not None:
            retry.cancel()
        self.cancel(session_id)

    async def shutdown(self, grace_seconds: float) -> None:
        """Let running turns finish for up to `grace_seconds`, then cancel them.

        A cancelled turn stores nothing; its user messages are still pending in the
        store, so the next start runs the turn again.
        """
        self._closing = True
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()
        workers = list(self._workers.values())
        if not workers:
            with contextlib.suppress(Exception):
                await self.leases.release_all()
            return
        _done, pending = await asyncio.wait(workers, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        for task in list(self._current.values()):
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        try:
            await self.leases.release_all()
        except Exception as exc:  # they expire by themselves
            log.warning("could not let the turn leases go: %r", exc)
