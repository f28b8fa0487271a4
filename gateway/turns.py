"""The per-session turn runner: serial, coalescing, cancellable.

`submit(session)` after a user message is committed. At most one worker task runs
per session; a submit during a running turn only marks the session dirty, and the
worker runs another turn afterwards that picks up every message that arrived
meanwhile (answered together). The check "dirty?" and the worker's removal happen
without an await in between, so a submit can never fall into the gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("gateway.turns")


class TurnRunner:
    def __init__(self, run_turn: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        self._run_turn = run_turn
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._current: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def submit(self, session_id: str) -> None:
        if self._closing:
            return  # picked up from the store after restart
        self._dirty.add(session_id)
        if session_id not in self._workers:
            task = asyncio.create_task(self._worker(session_id), name=f"turns:{session_id}")
            self._workers[session_id] = task

    def busy(self, session_id: str) -> bool:
        return session_id in self._current

    async def _worker(self, session_id: str) -> None:
        try:
            while session_id in self._dirty and not self._closing:
                self._dirty.discard(session_id)
                turn = asyncio.create_task(self._run_turn(session_id), name=f"turn:{session_id}")
                self._current[session_id] = turn
                try:
                    await turn
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the worker itself is being cancelled, not just this turn
                except Exception:
                    log.exception("turn crashed", extra={"session_id": session_id})
                finally:
                    self._current.pop(session_id, None)
        finally:
            self._workers.pop(session_id, None)

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
        self.cancel(session_id)

    async def shutdown(self, grace_seconds: float) -> None:
        """Let running turns finish for up to `grace_seconds`, then cancel them.

        A cancelled turn stores nothing; its user messages are still pending in the
        store, so the next start runs the turn again.
        """
        self._closing = True
        workers = list(self._workers.values())
        if not workers:
            return
        _done, pending = await asyncio.wait(workers, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        for task in list(self._current.values()):
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
