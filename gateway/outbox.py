"""Durable outbound delivery: the worker that drains the outbox.

Rows are written with the reply (same transaction), so a reply is never stored
without its delivery, nor delivered without being stored. The worker claims each
session's next part (committed before the provider call), sends it through the
channel's `Delivery`, and records the outcome: sent (with the provider id),
retried later with exponential backoff (5xx, timeouts, rate limits; `retry_after`
when the provider says), or failed with a typed error. After a crash, a part that
was mid-call is `uncertain`: a receipt that echoes its key settles it; otherwise
it fails after a grace period. It is never sent blindly a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping

from gateway.delivery import Delivery, SendFailed
from gateway.events import now_ms
from gateway.settings import ServerConfig
from gateway.store.records import OutboxItem
from gateway.store.sql import Store

log = logging.getLogger("gateway.outbox")


class Outbox:
    def __init__(self, store: Store, deliveries: Mapping[str, Delivery], config: ServerConfig) -> None:
        self._store = store
        self._deliveries = deliveries
        self._config = config
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.outbox_concurrency)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        recovered = await self._store.outbox.recover_in_flight(
            int(self._config.outbox_uncertain_grace_seconds * 1000)
        )
        if recovered:
            log.warning(
                "%d outbox parts were mid-send when the gateway stopped; awaiting their receipts", recovered
            )
        try:
            loop = asyncio.get_running_loop()
            next_expiry = 0.0
            while True:
                self._wake.clear()
                if loop.time() >= next_expiry:  # rare work: not on every wake-up
                    await self._store.outbox.expire_uncertain()
                    next_expiry = loop.time() + max(1.0, self._config.outbox_poll_seconds)
                for item in await self._store.outbox.claim_due(limit=self._config.outbox_concurrency):
                    task = asyncio.create_task(self._deliver(item), name=f"outbox:{item.id}")
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.outbox_poll_seconds):
                        await self._wake.wait()
        finally:
            for task in list(self._inflight):
                task.cancel()

    async def drain(self, seconds: float) -> None:
        """Let sends in flight finish (shutdown)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=seconds)

    def _backoff(self, item: OutboxItem, error: SendFailed) -> float:
        if error.retry_after is not None:
            return error.retry_after
        base = self._config.outbox_retry_base_seconds * (2 ** (item.attempts - 1))
        return float(min(base, 300.0) * random.uniform(0.8, 1.2))

    async def _deliver(self, item: OutboxItem) -> None:
        outbox = self._store.outbox
        async with self._slots:
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
            except SendFailed as exc:
                if exc.maybe_sent:
                    # Like a crash mid-call: a receipt carrying the part's key settles it; without
                    # one it fails after the grace period. Resending could deliver twice.
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
                    await outbox.mark_sent(item.id, provider_id)
                except Exception:
                    # It went out; only the record failed. The part stays `sending`, which a
                    # restart turns into `uncertain`: settled by a receipt, never sent again.
                    log.exception(
                        "a sent part (%s) could not be recorded",
                        provider_id,
                        extra={"session_id": item.session_id, "message_id": item.message_id},
                    )
        self.wake()  # the session's next part may go now
