"""Aliases and enums shared by every layer. No behaviour lives here."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NewType

SessionId = NewType("SessionId", str)
MessageId = NewType("MessageId", str)
AgentId = NewType("AgentId", str)
Seq = NewType("Seq", int)
JSON = dict[str, Any]


class Channel(StrEnum):
    WHATSAPP = "whatsapp"
    SMS = "sms"
    PHONE = "phone"
    CHAT = "chat"
    API = "api"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    SYSTEM = "system"


class Source(StrEnum):
    AGENT = "agent"
    HUMAN = "human"


class SessionStatus(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(StrEnum):
    HANGUP = "hangup"
    CLOSED = "closed"
    IDLE_TIMEOUT = "idle_timeout"
    WINDOW_EXPIRED = "window_expired"
    MAX_DURATION = "max_duration"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    ERASED = "erased"


class EventType(StrEnum):
    SESSION_STARTED = "session.started"
    USER_MESSAGE = "user.message"
    BOT_TOKEN = "bot.token"
    BOT_MESSAGE = "bot.message"
    BOT_CANCELLED = "bot.cancelled"  # live only: a reply stopped before it was complete
    # Session readers only: the agent has written its last delta (the reply is being stored).
    BOT_STREAM_END = "bot.streamEnd"
    MESSAGE_STATUS = "message.status"
    TOOL_CALL = "llm.toolCall"
    TOOL_RESULT = "llm.toolResult"
    SESSION_PAUSED = "session.paused"
    SESSION_RESUMED = "session.resumed"
    SESSION_IDLE_WARNING = "session.idleWarning"
    SESSION_TIMEOUT = "session.timeout"  # a limit ends the session; session.ended follows
    SESSION_ATTENTION = "session.attentionRequested"
    SESSION_ENDED = "session.ended"
    SESSION_ERROR = "session.error"
    SESSION_CONTEXT = "session.context"
    CALL_RINGING = "call.ringing"
    CALL_INTERRUPTED = "call.interrupted"
    CALL_DTMF = "call.dtmf"
    CALL_FORWARDED = "call.forwarded"
    AGENT_CONNECTED = "agent.connected"
    AGENT_DISCONNECTED = "agent.disconnected"


# Session id prefixes per channel (PROTOCOL §1).
SESSION_PREFIX: dict[Channel, str] = {
    Channel.WHATSAPP: "wa",
    Channel.SMS: "sms",
    Channel.PHONE: "call",
    Channel.CHAT: "chat",
    Channel.API: "api",
}
