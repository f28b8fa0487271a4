"""Per-message pricing of sent WhatsApp messages (a part of the Store, kept in its own module).

Meta reports a sent message's `pricing` (`category`, `type`, `pricing_model`,
`billable`) and, for older API versions or free entry points, its `conversation`
with the `sent` status and again with one of `delivered`/`read`. It is kept on the
outbox row of that message (the part that was sent): the first report sets it,
later ones only add fields. Summaries count parts, per session or per agent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.models import OutboxRow

if TYPE_CHECKING:
    from gateway.store.sql import Store

# Pricing types Meta does not charge for (PMP, from 2025-07-01).
FREE_TYPES = frozenset({"free_customer_service", "free_entry_point"})


def billable(pricing: Mapping[str, Any]) -> bool | None:
    """Charged or not: Meta's `billable` when it says, else from the pricing `type`."""
    value = pricing.get("billable")
    if isinstance(value, bool):
        return value
    kind = pricing.get("type")
    if isinstance(kind, str) and kind:
        return kind not in FREE_TYPES
    return None


class PricingQueries:
    """`store.pricing`: shares the store's engine and write lock."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._writer = store.writer

    def _read(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._store._read()

    async def record(
        self,
        *,
        channel: str,
        provider_message_id: str,
        idempotency_key: str | None,
        pricing: Mapping[str, Any] | None,
        conversation: Mapping[str, Any] | None,
    ) -> tuple[str, str, str | None] | None:
        """Keep what a status says about the price of one sent message.

        Returns (agent id, category, type) the first time the message gets a category
        (for the metrics), else None. Found by the provider's id, or by the part's key
        (`biz_opaque_callback_data`) when the status overtook the send's response.
        """
        if not pricing and not conversation:
            return None
        match = OutboxRow.provider_message_id == provider_message_id
        if idempotency_key:
            match = or_(match, OutboxRow.idempotency_key == idempotency_key)

        async def job(s: AsyncSession) -> tuple[str, str, str | None] | None:
            row = await s.scalar(select(OutboxRow).where(OutboxRow.channel == channel, match).limit(1))
            if row is None:
                return None
            kept: dict[str, Any] = dict(row.pricing or {})
            if pricing:
                kept.update(pricing)
            if conversation:
                kept["conversation"] = dict(conversation)
            row.pricing = kept
            first = row.pricing_category is None and bool(pricing and pricing.get("category"))
            if pricing:
                category = pricing.get("category")
                if isinstance(category, str) and category and row.pricing_category is None:
                    row.pricing_category = category[:48]
                kind = pricing.get("type")
                if isinstance(kind, str) and kind:
                    row.pricing_type = kind[:48]
                charged = billable(kept)
                if charged is not None:
                    row.pricing_billable = charged
            if first and row.pricing_category is not None:
                return row.agent_id, row.pricing_category, row.pricing_type
            return None

        return await self._writer.run(job)

    async def summary(
        self,
        *,
        session_id: str | None = None,
        agent_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> dict[str, Any]:
        """What the sent WhatsApp messages cost: counts by category and pricing type."""
        q = select(
            OutboxRow.pricing_category,
            OutboxRow.pricing_type,
            OutboxRow.pricing_billable,
            func.count(),
        ).where(OutboxRow.channel == "whatsapp", OutboxRow.provider_message_id.is_not(None))
        if session_id is not None:
            q = q.where(OutboxRow.session_id == session_id)
        if agent_id is not None:
            q = q.where(OutboxRow.agent_id == agent_id)
        if since is not None:
            q = q.where(OutboxRow.created_at >= since)
        if until is not None:
            q = q.where(OutboxRow.created_at < until)
        q = q.group_by(OutboxRow.pricing_category, OutboxRow.pricing_type, OutboxRow.pricing_billable)
        async with self._read() as s:
            rows = (await s.execute(q)).all()
        sent = priced = charged = 0
        categories: dict[str, int] = {}
        types: dict[str, int] = {}
        for category, kind, bill, count in rows:
            n = int(count)
            sent += n
            if category is None:
                continue
            priced += n
            categories[category] = categories.get(category, 0) + n
            if kind:
                types[kind] = types.get(kind, 0) + n
            if bill:
                charged += n
        return {
            "sent": sent,
            "priced": priced,
            "billable": charged,
            "categories": dict(sorted(categories.items())),
            "types": dict(sorted(types.items())),
        }
