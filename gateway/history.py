"""What the agent reads besides the new messages: the conversation so far, and a returning
contact's earlier conversations.

The session's own messages come with the turn's hot state (gateway/store/hot.py).
Earlier conversations no longer change, so `EarlierConversations` reads them once per
session, not on every turn (a phone call has many short turns). An erase anywhere in
this process empties it; that an erase in another process reaches it only when the
session ends or is evicted is the documented limit (docs/architecture.md).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from gateway.agents.base import ChatMessage, ToolCall
from gateway.settings import AgentConfig
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.sql import Store

CACHE_SESSIONS = 1024
HISTORY_ROLES = frozenset({"user", "assistant", "tool"})


def history(messages: Iterable[MessageRecord]) -> tuple[ChatMessage, ...]:
    """Answered messages as the model's history (hidden ones never reach it)."""
    return tuple(
        chat_message(m)
        for m in messages
        if not m.pending and m.role in HISTORY_ROLES and not (m.meta or {}).get("hidden")
    )


class EarlierConversations:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: OrderedDict[str, tuple[tuple[int, int], list[MessageRecord]]] = OrderedDict()

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    def clear(self) -> None:
        self._cache.clear()

    async def of(self, session: SessionRecord, config: AgentConfig) -> list[MessageRecord]:
        """A returning contact: the agent remembers their last conversations."""
        assert session.contact is not None
        limits = config.limits
        key = (limits.history_conversations, limits.history_messages)
        cached = self._cache.get(session.id)
        if cached is not None and cached[0] == key:
            self._cache.move_to_end(session.id)
            return cached[1]
        restored = await self._store.previous_messages(
            agent_id=session.agent_id,
            contact_id=session.contact.id,
            before_session=session.id,
            conversations=limits.history_conversations,
            limit=limits.history_messages,
        )
        self._cache[session.id] = (key, restored)
        if len(self._cache) > CACHE_SESSIONS:
            self._cache.popitem(last=False)
        return restored


def call_json(call: ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def result_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def chat_message(m: MessageRecord) -> ChatMessage:
    """A stored message as history for the model."""
    calls: tuple[ToolCall, ...] = ()
    call_id = name = None
    for part in m.parts:
        if isinstance(part, dict):
            if "toolCalls" in part:
                calls = tuple(
                    ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in part["toolCalls"]
                )
            if "toolCallId" in part:
                call_id, name = part["toolCallId"], part.get("name")
    return ChatMessage(
        role=m.role,
        content=m.text,
        source=m.source,
        tool_calls=calls,
        tool_call_id=call_id,
        name=name,
        message_id=m.id,
    )
