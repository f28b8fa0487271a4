"""Dedupe of inbound messages by the provider's id, set-wise for a batch.

A delivery repeated by the provider (a retry after a timeout, a redelivery) carries the
same `(channel, provider message id)`; the unique key on `messages` guards it against a
concurrent process too (the batch then fails and its jobs are run again one by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.models import MessageRow
from gateway.store.rows import _chunks


async def _duplicates(
    s: AsyncSession, specs: Sequence[dict[str, Any]]
) -> tuple[dict[tuple[str, str], str], list[int], dict[tuple[str, str], int], dict[int, tuple[str, str]]]:
    """Which specs repeat a stored `(channel, provider id)` or an earlier one of the batch:
    (stored key → its session, indexes to store, batch keys → index, duplicate → key).
    One SELECT per channel for the whole batch."""
    stored: dict[tuple[str, str], str] = {}
    by_channel: dict[str, set[str]] = {}
    for spec in specs:
        if spec.get("provider_message_id") is not None:
            by_channel.setdefault(str(spec["channel"]), set()).add(spec["provider_message_id"])
    for channel, pids in by_channel.items():
        for chunk in _chunks(sorted(pids)):
            found_ids = await s.execute(
                select(MessageRow.provider_message_id, MessageRow.session_id).where(
                    MessageRow.channel == channel, MessageRow.provider_message_id.in_(chunk)
                )
            )
            stored.update({(channel, str(pid)): sid for pid, sid in found_ids})
    fresh: list[int] = []  # indexes of the specs to store
    batch_keys: dict[tuple[str, str], int] = {}
    dup_of: dict[int, tuple[str, str]] = {}
    for i, spec in enumerate(specs):
        pid = spec.get("provider_message_id")
        key = (str(spec["channel"]), str(pid))
        if pid is not None and (key in stored or key in batch_keys):
            dup_of[i] = key
            continue
        if pid is not None:
            batch_keys[key] = i
        fresh.append(i)
    return stored, fresh, batch_keys, dup_of
