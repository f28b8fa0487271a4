"""Control from anywhere: an order given to one instance acts where its target lives.

With several instances, a running turn, a chat socket or a phone call's relay socket
live in one process, while the order that concerns them (a pause, an interrupt, a
session ended by an agent process, a call's hang-up, forward or digits) may come in at
any other. What is *data* needs nothing more: the order is stored, and every instance
reads it (a pause is checked by every later turn; a `session.ended` reaches every
chat socket and relay through the bus, which then close). What lives in memory is
reached here, through live signals on the bus topic `control` (no `seq`, like a token
delta; gateway/placement.py does the same for turns):

- `broadcast(kind, session)`: fire and forget, every other instance runs its local
  handler (`turn.stop`: cancel the session's running turn, if it runs there);
- `ask(kind, session, args)`: the one instance whose handler takes it answers on its
  own reply topic (`control:<instance>`), within `timeout`; nobody answering means
  nobody holds it (the caller then does what one process does without it).

A handler returns None when the target is not in this process, a result when it
acted, or raises a `GatewayError`, which the asker raises in turn (same code and status).
On the in-process bus (one process) there is nobody else to ask: `ask` answers None at
once and `broadcast` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.bus.facade import Bus
from gateway.errors import GatewayError

log = logging.getLogger("gateway.control")

TOPIC = "control"
_KIND = b"control"
DEFAULT_TIMEOUT = 3.0

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def _payload(body: dict[str, Any]) -> bytes:
    # An envelope header without a `seq` (gateway/codec.py), then the order as JSON.
    head = b"\t".join((_KIND, b"", b"", str(body.get("session", "")).encode()))
    return head + b"\n" + json.dumps(body, separators=(",", ":")).encode()


def _parse(payload: bytes) -> dict[str, Any] | None:
    head, _, body = payload.partition(b"\n")
    if not head.startswith(_KIND + b"\t"):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class Control:
    def __init__(self, bus: Bus, *, shared: bool, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._bus = bus
        self._shared = shared  # several instances share the bus (Redis); otherwise all is local
        self._timeout = timeout
        self.instance = os.urandom(8).hex()
        self._handlers: dict[str, Handler] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._serial = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def shared(self) -> bool:
        return self._shared

    def on(self, kind: str, handler: Handler) -> None:
        """Run `handler` for orders of `kind` that other instances send."""
        self._handlers[kind] = handler

    def broadcast(self, kind: str, session_id: str, args: dict[str, Any] | None = None) -> None:
        if self._shared:
            body = {"kind": kind, "session": session_id, "args": args or {}, "from": self.instance}
            self._bus.backend.publish(TOPIC, _payload(body))

    async def ask(
        self,
        kind: str,
        session_id: str,
        args: dict[str, Any] | None = None,
        *,
        wait_seconds: float | None = None,
    ) -> dict[str, Any] | None:
        """The answer of the instance that holds `session_id`'s target, or None (nobody does)."""
        if not self._shared:
            return None
        self._serial += 1
        rid = f"{self.instance}:{self._serial}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = waiter
        body = {"kind": kind, "session": session_id, "args": args or {}, "from": self.instance, "id": rid}
        try:
            self._bus.backend.publish(TOPIC, _payload(body))
            try:
                limit = self._timeout if wait_seconds is None else wait_seconds
                answer = await asyncio.wait_for(waiter, limit)
            except TimeoutError:
                return None
        finally:
            self._waiting.pop(rid, None)
        error = answer.get("error")
        if isinstance(error, dict):
            # The holder's error (its code and status), raised here as if it were local.
            raise GatewayError(
                str(error.get("message")), code=str(error.get("code")), status=int(error.get("status") or 409)
            )
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def serve(self) -> None:
        """Take the orders of other instances, and the answers to this one's questions
        (started only when the bus is shared)."""
        backend = self._bus.backend
        async with (
            backend.subscribe(TOPIC, maxsize=10_000) as orders,
            backend.subscribe(f"{TOPIC}:{self.instance}", maxsize=10_000) as answers,
        ):
            reading = asyncio.create_task(self._answers(answers))
            try:
                async for payload in orders:
                    order = _parse(payload)
                    if order is None or order.get("from") == self.instance:
                        continue
                    task = asyncio.create_task(self._run(order))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading

    async def _answers(self, answers: Any) -> None:
        async for payload in answers:
            answer = _parse(payload)
            if answer is None:
                continue
            waiter = self._waiting.get(str(answer.get("id")))
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)

    async def _run(self, order: dict[str, Any]) -> None:
        handler = self._handlers.get(str(order.get("kind")))
        session_id, args = order.get("session"), order.get("args")
        if handler is None or not isinstance(session_id, str) or not isinstance(args, dict):
            return
        reply: dict[str, Any] | None
        try:
            result = await handler(session_id, args)
            reply = None if result is None else {"result": result}
        except GatewayError as exc:
            reply = {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
        except Exception:
            log.exception("a control order failed", extra={"session_id": session_id})
            reply = {"error": {"code": "internal_error", "message": "the order failed", "status": 500}}
        rid, asker = order.get("id"), order.get("from")
        if reply is None or not isinstance(rid, str) or not isinstance(asker, str):
            return  # a broadcast, or not held here: the holder answers
        reply["id"] = rid
        self._bus.backend.publish(f"{TOPIC}:{asker}", _payload(reply))
