"""Takeover: a person takes a conversation from the agent, writes in it, hands it back.

Pause state is data (the store settles what a pause covers and every later inbound
message checks it); a reply being streamed when a pause lands is cancelled, so a
message gets a full agent reply or none. Also here: what a person or the agent sends
outside a turn (an operator's message, a template) and a caller's barge-in on a call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway import ids
from gateway.bus.facade import Bus
from gateway.control import Control
from gateway.delivery import Delivery, Template, provider_of
from gateway.directory import AgentDirectory
from gateway.errors import Conflict, NotFound
from gateway.events import Event, now_ms
from gateway.session_lookup import SessionLookup
from gateway.store.outbox import OutboxPart
from gateway.store.records import SessionRecord
from gateway.store.sql import NewMessage, Store
from gateway.turns import TurnRunner
from gateway.types import EventType

STOP_TURN = "turn.stop"  # a control order (gateway/control.py): cancel the session's running turn


class Takeover(SessionLookup):
    """The takeover half of `ConversationService` (which sets these attributes)."""

    store: Store
    bus: Bus
    directory: AgentDirectory
    turns: TurnRunner
    deliveries: Mapping[str, Delivery]
    on_outbox: Callable[[], None]
    control: Control

    def stop_turn(self, session_id: str) -> None:
        """Cancel the session's running turn, in this process or in the one that runs it."""
        self.turns.forget(session_id)
        self.control.broadcast(STOP_TURN, session_id)

    async def stop_turn_order(self, session_id: str, _args: Mapping[str, Any]) -> None:
        """Another instance paused or ended a session whose turn may run here."""
        self.turns.forget(session_id)

    async def set_paused(
        self,
        agent_id: str,
        paused: bool,
        *,
        session_id: str | None = None,
        contact: str | None = None,
        cancel_running: bool = True,
        by: str = "operator",
    ) -> list[str]:
        """Pause / resume a session, a contact (with this agent) or the whole agent (idempotent)."""
        self.directory.get(agent_id)
        if session_id is not None:
            session = await self.session(session_id)
            if session.agent_id != agent_id:
                raise NotFound(f"no session {session_id!r} for agent {agent_id!r}", code="unknown_session")
            if not session.active:
                raise Conflict(f"session {session_id} has ended", code="session_ended")
        changed, _ = await self.store.set_paused(
            agent_id, paused, session_id=session_id, contact=contact, extra={"by": by}
        )
        if paused and session_id is None:
            for sid in changed:  # the stored event names the agent or contact; tell each session too
                self.bus.publish_to_session(
                    Event(
                        type=EventType.SESSION_PAUSED,
                        agent=agent_id,
                        session_id=sid,
                        data={"contact": contact},
                    )
                )
        if not paused:
            for sid in changed:  # handed back: the attention request is answered
                resumed = await self.store.session(sid)
                if resumed is not None and "attention" in resumed.meta:
                    await self.store.update_session(
                        sid, meta={k: v for k, v in resumed.meta.items() if k != "attention"}
                    )
        if paused and cancel_running:
            for sid in changed:
                # A reply being streamed stops now: the message gets a full AI reply or none.
                self.stop_turn(sid)
        return changed

    async def send_human(self, session_id: str, text: str, *, author: str, by: str | None = None) -> str:
        """An operator's message, delivered on the session's own channel, stored as `source: human`."""
        session = await self.session(session_id)
        if not session.active:
            raise Conflict(f"session {session_id} has ended", code="session_ended")
        delivery = self.deliveries.get(provider_of(session) or "")
        outbox: list[OutboxPart] = []
        if delivery is not None:
            if not delivery.window_open(session, now_ms()):
                raise Conflict(
                    "the 24-hour window is closed: only a template can reach this contact now",
                    code="window_closed",
                )
            payloads = delivery.render(session, text, None)
            outbox = [OutboxPart(payload=p, part=i, parts=len(payloads)) for i, p in enumerate(payloads)]
        message_id = ids.message_id()
        await self.store.record_reply(
            session_id=session_id,
            answered=[],
            messages=[
                NewMessage(
                    id=message_id,
                    role="assistant",
                    text=text,
                    source="human",
                    author=author,
                    meta={"by": by} if by else None,  # the key that sent it (audit)
                )
            ],
            outbox=outbox,
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={
                        "messageId": message_id,
                        "text": text,
                        "source": "human",
                        "author": author,
                        **({"by": by} if by else {}),
                    },
                )
            ],
        )
        if outbox:
            self.on_outbox()
        return message_id

    async def send_template(self, session: SessionRecord, template: Template) -> str:
        """Queue a provider-approved template: it may go out even when the 24-hour window is closed."""
        message = NewMessage(
            id=ids.message_id(), role="assistant", text=f"[template: {template.name}]", parts=[template.part]
        )
        await self.store.record_reply(
            session_id=session.id,
            answered=[],
            messages=[message],
            outbox=[OutboxPart(payload=template.payload, part=0, parts=1)],
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session.id,
                    channel=session.channel,
                    data={
                        "messageId": message.id,
                        "text": message.text,
                        "source": "agent",
                        "template": template.name,
                    },
                )
            ],
        )
        self.on_outbox()
        return message.id

    async def request_human(self, session_id: str, reason: str) -> None:
        """The agent asked for a person: pause (without cancelling the turn asking) and alert."""
        session = await self.session(session_id)
        await self.set_paused(session.agent_id, True, session_id=session_id, cancel_running=False, by="agent")
        # Stored on the session so a console opened later still sees who is waiting for a human.
        await self.store.update_session(
            session_id, meta={**session.meta, "attention": {"reason": reason, "at": now_ms()}}
        )
        await self.store.append_events(
            [
                Event(
                    type=EventType.SESSION_ATTENTION,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={"reason": reason},
                )
            ]
        )

    async def interrupt(
        self,
        session_id: str,
        message_id: str | None,
        spoken: str,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """The person cut the reply short (a phone call): keep only what they heard.

        A reply still streaming is cancelled and stored with the `spoken` text as the
        answer to the pending messages; a reply already stored (the model outran the
        speech) is cut down to `spoken`, its full text kept in `meta.fullText`.
        """
        self.control.broadcast(STOP_TURN, session_id)  # a turn of the call run elsewhere (rare)
        await self.turns.stop(session_id)
        session = await self.session(session_id)
        messages = await self.store.messages(session_id)
        stored = next((m for m in messages if m.id == message_id), None) if message_id else None
        info: dict[str, Any] = {"messageId": message_id, "spoken": spoken, **(data or {})}
        notice = Event(
            type=EventType.CALL_INTERRUPTED,
            agent=session.agent_id,
            session_id=session_id,
            channel=session.channel,
            data=info,
        )
        if stored is not None:
            if stored.text != spoken and stored.role == "assistant":
                await self.store.update_message(
                    stored.id, text=spoken, meta={"interrupted": True, "fullText": stored.text}
                )
            await self.store.append_events([notice])
            return
        pending = [m for m in messages if m.pending and m.role == "user"]
        if message_id is None or not pending:
            await self.store.append_events([notice])
            return
        last = pending[-1].id
        await self.store.record_reply(
            session_id=session_id,
            answered=[m.id for m in pending],
            messages=[
                NewMessage(
                    id=message_id,
                    role="assistant",
                    text=spoken,
                    in_reply_to=last,
                    meta={"interrupted": True},
                )
            ],
            events=[
                Event(
                    type=EventType.BOT_MESSAGE,
                    agent=session.agent_id,
                    session_id=session_id,
                    channel=session.channel,
                    data={
                        "messageId": message_id,
                        "text": spoken,
                        "source": "agent",
                        "inReplyTo": last,
                        "answered": [m.id for m in pending],
                        "interrupted": True,
                    },
                ),
                notice,
            ],
        )
