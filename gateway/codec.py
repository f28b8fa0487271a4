"""The only place JSON meets events.

Bus envelopes carry a tab-separated header line in front of the JSON so that a
subscriber can filter by type, agent or session (and render an SSE frame) without
decoding the JSON: fan-out to a thousand feeds then costs one encode per event.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.events import Event
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

    __slots__ = ("_frame", "agent", "body", "seq", "session_id", "type")

    def __init__(
        self, *, type: str, seq: int | None, agent: str, session_id: str | None, body: bytes
    ) -> None:
        self.type = type
        self.seq = seq
        self.agent = agent
        self.session_id = session_id
        self.body = body
        self._frame: bytes | None = None

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

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
