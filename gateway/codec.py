"""The only place JSON meets events.

Bus envelopes carry a tab-separated header line in front of the JSON so that a
subscriber can filter by type, agent or session (and render an SSE frame) without
decoding the JSON: fan-out to a thousand feeds then costs one encode per event.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway import events as ev
from gateway.events import Event, Happened
from gateway.sanitizer import clean_json


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: Event) -> bytes:
    header = "\t".join(
        (
            str(event.type),
            "" if event.seq is None else str(event.seq),
            event.agent,
            event.session_id or "",
        )
    )
    try:
        return (header + "\n" + dumps(event.to_wire())).encode()
    except UnicodeEncodeError:
        # Only data stored before the edges made text safe (gateway/sanitizer.py) gets here:
        # a feed replay must go past it, not stop at it.
        return (header + "\n" + dumps(clean_json(event.to_wire()))).encode()


class Envelope:
    """A bus message whose JSON body has not been decoded: its header is parsed once
    (by the fan-out) and every reader shares it; the SSE frame is built once too."""

    __slots__ = ("_event", "_frame", "agent", "body", "seq", "session_id", "type")

    def __init__(
        self, *, type: str, seq: int | None, agent: str, session_id: str | None, body: bytes
    ) -> None:
        self.type = type
        self.seq = seq
        self.agent = agent
        self.session_id = session_id
        self.body = body
        self._frame: bytes | None = None
        self._event: Happened | None = None

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def event(self) -> Happened:
        """The typed event, decoded once however many readers ask."""
        typed = self._event
        if typed is None:
            typed = self._event = typed_event(self.type, self.json())
        return typed

    def sse_frame(self) -> bytes:
        frame = self._frame
        if frame is None:
            head = b"" if self.seq is None else b"id: %d\n" % self.seq
            frame = self._frame = head + b"event: " + self.type.encode() + b"\ndata: " + self.body + b"\n\n"
        return frame


def decode_envelope(raw: bytes) -> Envelope:
    header, _, body = raw.partition(b"\n")
    type_, seq, agent, session = header.decode().split("\t")
    return Envelope(
        type=type_,
        seq=int(seq) if seq else None,
        agent=agent,
        session_id=session or None,
        body=body,
    )


def decode_event(raw: bytes) -> Happened:
    """A bus message as its typed event: what every reader of the bus uses."""
    return decode_envelope(raw).event()


_HEAD = frozenset({"event", "seq", "ts", "agent", "sessionId", "channel"})


def _s(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _o(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _ids(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _n(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_Build = Callable[[dict[str, Any], dict[str, Any]], Happened]
_TYPED: dict[str, _Build] = {
    "session.started": lambda h, o: ev.SessionStarted(**h),
    "user.message": lambda h, o: ev.UserMessage(**h, message_id=_s(o, "messageId"), text=_s(o, "text")),
    "bot.token": lambda h, o: ev.BotToken(
        **h, message_id=_s(o, "messageId"), in_reply_to=_o(o, "inReplyTo"), text=_s(o, "text")
    ),
    "bot.message": lambda h, o: ev.BotMessage(
        **h,
        message_id=_s(o, "messageId"),
        text=_s(o, "text"),
        source=_o(o, "source"),
        in_reply_to=_o(o, "inReplyTo"),
        answered=_ids(o, "answered"),
        greeting=bool(o.get("greeting")),
        interrupted=bool(o.get("interrupted")),
    ),
    "bot.cancelled": lambda h, o: ev.BotCancelled(
        **h, message_id=_s(o, "messageId"), in_reply_to=_o(o, "inReplyTo"), answered=_ids(o, "answered")
    ),
    "bot.streamEnd": lambda h, o: ev.BotStreamEnd(**h, message_id=_s(o, "messageId")),
    "message.status": lambda h, o: ev.MessageStatus(
        **h, message_id=_s(o, "messageId"), status=_s(o, "status")
    ),
    "llm.toolCall": lambda h, o: ev.ToolCall(**h, message_id=_s(o, "messageId")),
    "llm.toolResult": lambda h, o: ev.ToolResult(**h, tool_call_id=_s(o, "toolCallId"), name=_s(o, "name")),
    "session.paused": lambda h, o: ev.SessionPaused(**h, by=_o(o, "by")),
    "session.resumed": lambda h, o: ev.SessionResumed(**h, by=_o(o, "by")),
    "session.idleWarning": lambda h, o: ev.SessionIdleWarning(
        **h,
        remaining_seconds=_n(o, "remainingSeconds"),
        idle_timeout_seconds=_n(o, "idleTimeoutSeconds"),
        final=bool(o.get("final")),
    ),
    "session.timeout": lambda h, o: ev.SessionTimeout(**h, reason=_o(o, "reason")),
    "session.attentionRequested": lambda h, o: ev.SessionAttention(**h),
    "session.ended": lambda h, o: ev.SessionEnded(**h, reason=_o(o, "reason")),
    "session.error": lambda h, o: ev.SessionError(
        **h,
        code=_o(o, "code"),
        message=_o(o, "message"),
        in_reply_to=_o(o, "inReplyTo"),
        answered=_ids(o, "answered"),
    ),
    "session.context": lambda h, o: ev.SessionContext(**h),
    "call.ringing": lambda h, o: ev.CallRinging(**h),
    "call.interrupted": lambda h, o: ev.CallInterrupted(**h),
    "call.dtmf": lambda h, o: ev.CallDtmf(**h),
    "call.forwarded": lambda h, o: ev.CallForwarded(**h),
    "agent.connected": lambda h, o: ev.AgentConnected(**h, process=_o(o, "process")),
    "agent.disconnected": lambda h, o: ev.AgentDisconnected(**h, process=_o(o, "process")),
}


def typed_event(type_: str, obj: dict[str, Any]) -> Happened:
    """The typed event of one wire object (PROTOCOL §2); unknown types become `OtherEvent`."""
    seq = obj.get("seq")
    ts = obj.get("ts")
    head: dict[str, Any] = {
        "seq": seq if isinstance(seq, int) else None,
        "ts": ts if isinstance(ts, int) else 0,
        "agent": _s(obj, "agent"),
        "session_id": _o(obj, "sessionId"),
        "channel": _o(obj, "channel"),
        "data": {k: v for k, v in obj.items() if k not in _HEAD},
    }
    build = _TYPED.get(type_)
    if build is None:
        return ev.OtherEvent(**head, type=type_)
    return build(head, obj)


def event_from_wire(obj: dict[str, Any]) -> Event:
    """Rebuild an Event from its wire JSON (used by bus readers that need the object)."""
    reserved = {"event", "seq", "ts", "agent", "sessionId", "channel"}
    return Event(
        type=obj["event"],
        agent=obj["agent"],
        ts=obj.get("ts", 0),
        session_id=obj.get("sessionId"),
        channel=obj.get("channel"),
        seq=obj.get("seq"),
        data={k: v for k, v in obj.items() if k not in reserved},
    )


RAW_LIMIT = 16_384  # characters of JSON kept of a provider object the gateway does not understand


def bounded(obj: Any, limit: int = RAW_LIMIT) -> Any:
    """`obj` as is when its JSON fits in `limit` characters, else its JSON cut to that size.

    For provider payloads kept "just in case" (unknown message types): nothing is lost
    in the common case, and a hostile or huge object cannot bloat a stored row.
    """
    text = dumps(obj)
    if len(text) <= limit:
        return obj
    return {"truncated": True, "size": len(text), "json": text[:limit]}
