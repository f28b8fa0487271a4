"""Observations: what a channel or an agent process tells the service outside a turn.

Events a channel observed (a delivery problem, a call's progress, a process that came
or went), provider receipts and prices, annotations on stored messages, a session's
settings and notes, an agent a process declared, and an agent-side message outside a
turn (a call's greeting, a first outbound message). The service is the one writer of
conversations: channels and the agent socket change nothing through the store directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from gateway import ids
from gateway.control import Control
from gateway.directory import AgentDirectory
from gateway.events import Event
from gateway.session_lookup import SessionLookup
from gateway.settings import AgentConfig
from gateway.store.outbox import OutboxPart
from gateway.store.records import SessionRecord
from gateway.store.sql import NewMessage, Store
from gateway.types import EventType

log = logging.getLogger("gateway.observations")

AGENT_DECLARED = "agent.declared"  # a control order (gateway/control.py): know this agent too


class Observations(SessionLookup):
    """The observations half of `ConversationService` (which sets these attributes)."""

    store: Store
    on_outbox: Callable[[], None]
    control: Control
    directory: AgentDirectory

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Events a channel observed (a delivery problem, a call's progress, a process that
        came or went): stored, then published."""
        return await self.store.append_events(events)

    async def declare_agent(self, agent_id: str, config: dict[str, Any]) -> None:
        """An agent a process declared: kept so its sessions and tokens outlive the process,
        and known at once to every other instance (gateway/control.py)."""
        await self.store.sync_agents({agent_id: config}, origin="process")
        self.control.broadcast(AGENT_DECLARED, agent_id, {"config": config})

    async def agent_declared_order(self, agent_id: str, args: Mapping[str, Any]) -> None:
        """A process declared an agent at another instance: know it here too."""
        if agent_id in self.directory and self.directory.origin(agent_id) == "config":
            return  # gateway.toml's definition stays
        try:
            config = AgentConfig.model_validate(args.get("config"))
        except ValidationError:
            log.warning(
                "an agent declared elsewhere has an invalid config; skipped", extra={"agent": agent_id}
            )
            return
        self.directory.put(agent_id, config, origin="process")

    async def update_session(
        self,
        session_id: str,
        *,
        meta: dict[str, Any] | None = None,
        endpoint: str | None = None,
        prompt: str | None = None,
        prompt_vars: dict[str, Any] | None = None,
    ) -> SessionRecord | None:
        values: dict[str, Any] = {
            k: v
            for k, v in (
                ("meta", meta),
                ("endpoint", endpoint),
                ("prompt", prompt),
                ("prompt_vars", prompt_vars),
            )
            if v is not None
        }
        return (
            await self.store.update_session(session_id, **values)
            if values
            else await self.store.session(session_id)
        )

    async def add_note(self, session_id: str, text: str, *, keep: int = 50) -> None:
        """A note for the agent's context (the last `keep` are kept)."""
        session = await self.session(session_id)
        notes = [*session.context.get("_notes", []), text]
        await self.store.update_session(session_id, context={**session.context, "_notes": notes[-keep:]})

    async def replace_history(self, session_id: str, messages: Sequence[NewMessage]) -> bool:
        return await self.store.replace_history(session_id, messages)

    async def set_transcript(self, message_id: str, text: str) -> None:
        """A voice note's transcript becomes its message's text."""
        await self.store.update_message(message_id, text=text, meta={"transcribed": True})

    async def annotate_message(
        self, *, channel: str, provider_message_id: str, key: str, value: Any, events: Sequence[Event] = ()
    ) -> str | None:
        return await self.store.annotate_message(
            channel=channel, provider_message_id=provider_message_id, key=key, value=value, events=events
        )

    async def rekey_contact(self, *, channel: str, old: str, new: str) -> bool:
        return await self.store.rekey_contact(channel=channel, old=old, new=new)

    async def delivery_status(
        self,
        *,
        channel: str,
        provider_message_id: str,
        status: str,
        error: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        close_window: bool = False,
    ) -> list[Event]:
        """A provider's receipt for a message we sent (the events it caused); with
        `close_window` the provider said the session's reply window is closed."""
        events = await self.store.outbox.delivery_status(
            channel=channel,
            provider_message_id=provider_message_id,
            status=status,
            error=error,
            idempotency_key=idempotency_key,
        )
        if close_window and events and events[0].session_id:
            await self.store.outbox.close_window(events[0].session_id)
        return events

    async def record_pricing(
        self,
        *,
        channel: str,
        provider_message_id: str,
        idempotency_key: str | None,
        pricing: Mapping[str, Any] | None,
        conversation: Mapping[str, Any] | None,
    ) -> tuple[str, str, str | None] | None:
        """What a receipt says about the price of one sent message: (agent, category, kind)."""
        return await self.store.pricing.record(
            channel=channel,
            provider_message_id=provider_message_id,
            idempotency_key=idempotency_key,
            pricing=pricing,
            conversation=conversation,
        )

    async def say(
        self,
        session: SessionRecord,
        text: str,
        *,
        outbox: Sequence[OutboxPart] = (),
        meta: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """An agent-side message outside a turn (a call's greeting, a first outbound message),
        with the outbox parts that deliver it, if any."""
        message_id = message_id or ids.message_id()
        data: dict[str, Any] = {"messageId": message_id, "text": text, "source": "agent", **(extra or {})}
        await self.store.record_reply(
            session_id=session.id,
            answered=[],
            messages=[NewMessage(id=message_id, role="assistant", text=text, meta=meta)],
            outbox=outbox,
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session.id,
                    channel=session.channel,
                    data=data,
                )
            ],
        )
        if outbox:
            self.on_outbox()
        return message_id
