"""Durable outbound delivery: the worker that drains the outbox.

Rows are written with the reply (same transaction), so a reply is never stored
without its delivery, nor delivered without being stored. The worker claims each
session's next part only when a send slot is free (so `sending` means "its provider
call is in flight": a crash can only catch parts that were really mid-call), sends it
through the channel's `Delivery`, and records the outcome: sent (with the provider
id), retried later with exponential backoff (5xx, timeouts, rate limits;
`retry_after` when the provider says), or failed with a typed error.

A part whose outcome is unknown (the process died or was stopped mid-call, or the
provider never answered a request it may have accepted) is `uncertain`: a receipt
that echoes its key settles it as sent; with no receipt within
`outbox_uncertain_grace_seconds` it is sent again. Providers report a send within
seconds, so a part still unconfirmed after the grace period most likely never went
out; resending risks a rare duplicate where failing would lose the reply for sure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

from gateway.delivery import Delivery, SendFailed
from gateway.events import Event, now_ms
from gateway.settings import ServerConfig
from gateway.store.records import OutboxItem
from gateway.store.sql import Store

log = logging.getLogger("gateway.outbox")


class Outbox:
    def __init__(
        self,
        store: Store,
        deliveries: Mapping[str, Delivery],
        config: ServerConfig,
        leads: Callable[[], bool] = lambda: True,
        *,
        instance: str | None = None,
    ) -> None:
        self._store = store
        # Several instances: the leader alone expires uncertain parts (a sweeper). Every
        # instance claims and sends (gateway/turn_lease.py names this one): a claim is one
        # conditional UPDATE, exclusive across processes (tests/store/test_outbox_claim_processes.py),
        # recording its instance. A part left `sending` is recovered (made uncertain) only
        # once its instance is no longer alive.
        self._leads = leads
        self._instance = instance
        self._deliveries = deliveries
        self._config = config
        self._wake = asyncio.Event()  # something to do: handed parts, or a poll asked for
        self._poll = True  # the next iteration polls (recovery path); the first one does
        self._handed: dict[str, deque[OutboxItem]] = {}  # per session, in commit order
        self._busy: set[str] = set()  # sessions with a part in flight from this process
        self._inflight: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Future[list[Event]]] = set()  # records of sends that went out
        self._closing = False
        self._stopped = asyncio.Event()  # the claim loop has exited

    def wake(self, items: Sequence[OutboxItem] = ()) -> None:
        """Parts a commit just queued (sent without a poll), or, with none, poll soon."""
        if items:
            for item in items:
                self._handed.setdefault(item.session_id, deque()).append(item)
        else:
            self._poll = True
        self._wake.set()

    async def _recover(self, *, restart: bool) -> None:
        recovered = await self._store.outbox.recover_in_flight(
            int(self._config.outbox_uncertain_grace_seconds * 1000),
            shared=self._instance is not None,
            restart=restart,
        )
        if recovered:
            log.warning(
                "%d outbox parts were mid-send when their sender stopped; awaiting their receipts", recovered
            )

    async def run(self) -> None:
        await self._recover(restart=True)
        try:
            loop = asyncio.get_running_loop()
            next_expiry = 0.0
            next_poll = 0.0
            next_recovery = loop.time() + self._config.turn_lease_seconds / 2
            while not self._closing:
                self._wake.clear()
                if loop.time() >= next_expiry and self._leads():  # rare work: not on every wake-up
                    await self._store.outbox.expire_uncertain(self._config.outbox_max_attempts)
                    next_expiry = loop.time() + max(1.0, self._config.outbox_poll_seconds)
                if self._instance is not None and loop.time() >= next_recovery:
                    # A dead instance's sends in flight: its row expires with its leases.
                    await self._recover(restart=False)
                    next_recovery = loop.time() + self._config.turn_lease_seconds / 2
                # Claim no more than the free slots: a claimed part is sent at once, never
                # left `sending` in a queue where a crash would make it look mid-call.
                await self._claim_handed()
                if self._poll or loop.time() >= next_poll:
                    self._poll = False
                    next_poll = loop.time() + self._config.outbox_poll_seconds
                    free = self._config.outbox_concurrency - len(self._inflight)
                    if free > 0:
                        claimed = await self._claim(
                            self._store.outbox.claim_due(limit=free, by=self._instance)
                        )
                        for item in claimed:
                            handed = self._handed.get(item.session_id)
                            if handed and handed[0].id == item.id:
                                handed.popleft()  # the poll came first: the rest stays handed
                            self._start(item, polled=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_poll - loop.time())):
                        await self._wake.wait()
        finally:
            self._stopped.set()
            if not self._closing:  # cancelled without `stop`: the sends go with it
                for task in list(self._inflight):
                    task.cancel()

    async def _claim_handed(self) -> None:
        """Claim the next handed part of each idle session, all in one statement."""
        free = self._config.outbox_concurrency - len(self._inflight)
        heads: list[OutboxItem] = []
        for sid, queue in list(self._handed.items()):
            if len(heads) >= free:
                break
            if not queue:
                del self._handed[sid]
            elif sid not in self._busy:
                heads.append(queue.popleft())
        if not heads:
            return
        claimed = {
            item.id: item for item in await self._claim(self._store.outbox.claim(heads, by=self._instance))
        }
        for head in heads:
            item = claimed.get(head.id)
            if item is not None:
                self._start(item, polled=False)
            else:
                # Refused: claimed elsewhere, or an earlier part of its session still waits
                # (backing off, uncertain). The poll sends the session's parts in order.
                self._handed.pop(head.session_id, None)
                self._poll = True
        for sid in [sid for sid, queue in self._handed.items() if not queue]:
            del self._handed[sid]

    def _start(self, item: OutboxItem, *, polled: bool) -> None:
        self._busy.add(item.session_id)
        task = asyncio.create_task(self._deliver(item, polled), name=f"outbox:{item.id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _claim(self, claiming: Awaitable[list[OutboxItem]]) -> list[OutboxItem]:
        """Cancelled mid-claim, give back what the claim committed, so a part is never
        left `sending` without a send."""
        claim = asyncio.ensure_future(claiming)
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                items = await claim
                await self._store.outbox.release([i.id for i in items])
            raise

    async def stop(self, grace_seconds: float) -> None:
        """Shutdown: claim nothing more; sends in flight get `grace_seconds` to finish.

        A send still running then is cancelled and recorded as `uncertain` (its request
        may have reached the provider), so the next start settles it by receipt or
        resends it after the grace period; nothing is left `sending`.
        """
        self._closing = True
        self.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # The claim loop ends its iteration first, so every part it claimed has its send.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self._stopped.wait()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=max(0.0, deadline - loop.time()))
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=5)
        if self._recording:
            await asyncio.wait(list(self._recording), timeout=5)  # sends that went out get recorded

    async def _record_sent(self, item: OutboxItem, provider_id: str) -> None:
        """Record a part as sent. The writer merges the records of sends that finish
        together into one set-wise call; a cancelled sender (shutdown) does not cancel
        the record of a send that went out."""
        record = asyncio.ensure_future(self._store.outbox.record_sent(item, provider_id))
        record.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, even if nobody waits
        self._recording.add(record)
        record.add_done_callback(self._recording.discard)
        await asyncio.shield(record)

    def _backoff(self, item: OutboxItem, error: SendFailed) -> float:
        if error.retry_after is not None:
            return error.retry_after
        base = self._config.outbox_retry_base_seconds * (2 ** (item.attempts - 1))
        return float(min(base, 300.0) * random.uniform(0.8, 1.2))

    async def _deliver(self, item: OutboxItem, polled: bool) -> None:
        try:
            await self._send(item)
        finally:
            self._busy.discard(item.session_id)
            if polled:
                # The session's next part may be due now, and only the poll knows it (the
                # successor of a handed part, if any, was handed too).
                self._poll = True
            self._wake.set()

    async def _send(self, item: OutboxItem) -> None:
        outbox = self._store.outbox
        provider = (item.endpoint or "").split(":", 1)[0]
        delivery = self._deliveries.get(provider)
        try:
            if delivery is None:
                raise SendFailed(
                    "no_sender",
                    f"no channel can send for {provider or 'this session'!r}",
                    retryable=False,
                )
            provider_id = await delivery.send(item)
        except asyncio.CancelledError:
            # Shutdown cut the call: it may have reached the provider.
            await outbox.mark_uncertain(
                item.id,
                int(self._config.outbox_uncertain_grace_seconds * 1000),
                {"code": "send_interrupted", "message": "the gateway stopped during this send"},
            )
            raise
        except SendFailed as exc:
            if exc.maybe_sent:
                # Like a crash mid-call: a receipt carrying the part's key settles it; without
                # one it is sent again after the grace period (not at once: it may have gone).
                log.warning(
                    "send outcome unknown (%s); awaiting a receipt",
                    exc.message,
                    extra={"session_id": item.session_id, "message_id": item.message_id},
                )
                await outbox.mark_uncertain(
                    item.id, int(self._config.outbox_uncertain_grace_seconds * 1000), exc.as_json()
                )
                self.wake()
                return
            if exc.closes_window:
                await outbox.close_window(item.session_id)
            if exc.retryable and item.attempts < self._config.outbox_max_attempts:
                delay = self._backoff(item, exc)
                log.info(
                    "send failed (%s), retry %d in %.1f s",
                    exc.code,
                    item.attempts,
                    delay,
                    extra={"session_id": item.session_id, "message_id": item.message_id},
                )
                await outbox.mark_retry(item.id, now_ms() + int(delay * 1000), exc.as_json())
            else:
                log.warning(
                    "send failed for good: %s",
                    exc.message,
                    extra={"session_id": item.session_id, "message_id": item.message_id},
                )
                await outbox.mark_failed(item.id, exc.as_json())
        except Exception as exc:  # a sender bug: retry like a transient failure, never lose the part
            log.exception("sender crashed", extra={"session_id": item.session_id})
            error = SendFailed("sender_error", repr(exc), retryable=True)
            if item.attempts < self._config.outbox_max_attempts:
                await outbox.mark_retry(
                    item.id, now_ms() + int(self._backoff(item, error) * 1000), error.as_json()
                )
            else:
                await outbox.mark_failed(item.id, error.as_json())
        else:
            try:
                await self._record_sent(item, provider_id)
            except Exception:
                # It went out; only the record failed. The part stays `sending`, which a
                # restart turns into `uncertain`: settled by its receipt.
                log.exception(
                    "a sent part (%s) could not be recorded",
                    provider_id,
                    extra={"session_id": item.session_id, "message_id": item.message_id},
                )
