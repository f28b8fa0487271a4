"""The normalized conversation model: frozen, keyword-only events.

Channels parse provider payloads into these once, at the edge; everything after the
edge speaks only these types. `Event` is the one shape every stream carries
(PROTOCOL §2); `codec` is the only place it meets JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.types import Channel, EventType


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One thing that happened. `seq` is set once the event is persisted."""

    type: EventType | str
    agent: str
    ts: int = field(default_factory=now_ms)
    session_id: str | None = None
    channel: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def with_seq(self, seq: int) -> Event:
        return Event(
            type=self.type,
            agent=self.agent,
            ts=self.ts,
            session_id=self.session_id,
            channel=self.channel,
            data=self.data,
            seq=seq,
        )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object of PROTOCOL §2."""
        out: dict[str, Any] = {"event": str(self.type)}
        if self.seq is not None:
            out["seq"] = self.seq
        out["ts"] = self.ts
        out["agent"] = self.agent
        if self.session_id is not None:
            out["sessionId"] = self.session_id
        if self.channel is not None:
            out["channel"] = self.channel
        for key, value in self.data.items():
            if key not in out:
                out[key] = value
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ContactRef:
    """A person on a channel: a WhatsApp wa_id, an E.164 number or a userId."""

    channel: Channel
    address: str
    name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundMessage:
    """A user's message as a channel hands it to the conversation service."""

    agent: str
    channel: Channel
    contact: ContactRef | None
    text: str
    type: str = "text"
    session_id: str | None = None
    provider_message_id: str | None = None
    parts: tuple[Mapping[str, Any], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    endpoint: str | None = None  # the business side, e.g. "whatsapp:<phone_number_id>"
    turn: bool = True  # False: record only (a reaction), no agent turn
    extra: Mapping[str, Any] = field(default_factory=dict)  # more fields for the user.message event
    message_meta: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ typed events
#
# What a reader gets from the bus: one frozen class per event type, built by the codec
# (`codec.decode_event`) from an envelope, once. Readers match on the class instead of
# picking keys out of a decoded dict. Each keeps the whole wire object beyond the head
# in `data` (nothing is lost for a reader that forwards it); the typed fields are the
# ones a reader acts on.


@dataclass(frozen=True, kw_only=True, slots=True)
class Happened:
    """The head every typed event shares (PROTOCOL §2)."""

    seq: int | None = None
    ts: int = 0
    agent: str = ""
    session_id: str | None = None
    channel: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionStarted(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class UserMessage(Happened):
    message_id: str = ""
    text: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BotToken(Happened):
    """A delta of a reply being written (live only: no seq)."""

    message_id: str = ""
    in_reply_to: str | None = None
    text: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BotMessage(Happened):
    message_id: str = ""
    text: str = ""
    source: str | None = None  # "agent", "human"
    in_reply_to: str | None = None
    answered: tuple[str, ...] = ()
    greeting: bool = False
    interrupted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class BotCancelled(Happened):
    message_id: str = ""
    in_reply_to: str | None = None
    answered: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class BotStreamEnd(Happened):
    message_id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageStatus(Happened):
    message_id: str = ""
    status: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall(Happened):
    message_id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolResult(Happened):
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionPaused(Happened):
    by: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionResumed(Happened):
    by: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionIdleWarning(Happened):
    remaining_seconds: float | None = None
    idle_timeout_seconds: float | None = None
    final: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionTimeout(Happened):
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionAttention(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionEnded(Happened):
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionError(Happened):
    code: str | None = None
    message: str | None = None
    in_reply_to: str | None = None
    answered: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionContext(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class CallRinging(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class CallInterrupted(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class CallDtmf(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class CallForwarded(Happened):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConnected(Happened):
    process: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentDisconnected(Happened):
    process: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OtherEvent(Happened):
    """A type this version does not know (a newer producer on a shared bus)."""

    type: str = ""
