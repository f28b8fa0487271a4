"""Chat WebSocket frames: parsed once, here, into typed frames.

Every way a browser frame can be wrong maps to a `FrameError` with a stable code;
the socket answers it with `chat.error` and stays open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway import sanitizer

MAX_CONTEXT_KEY = 128
MAX_CONTEXT_VALUE_CHARS = 8192


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True, slots=True)
class UserText:
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SetContext:
    key: str
    value: Any  # None clears the key


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping:
    pass


ClientFrame = UserText | SetContext | Ping


def parse_client_frame(raw: str | bytes, *, max_text: int, max_bytes: int) -> ClientFrame:
    if len(raw) > max_bytes:
        raise FrameError("frame_too_large", f"frames are limited to {max_bytes} bytes")
    try:
        obj = sanitizer.parse_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FrameError("invalid_json", "frames must be JSON objects") from None
    if not isinstance(obj, dict):
        raise FrameError("invalid_frame", "frames must be JSON objects")
    if sanitizer.may_need_cleaning(raw) and (found := sanitizer.find_problem(obj, "")) is not None:
        where, what = found
        code = {"text": "invalid_text", "key": "invalid_context", "value": "invalid_context"}
        top = where.split(".", 1)[0].split("[", 1)[0]
        raise FrameError(code.get(top, "invalid_frame"), f"`{sanitizer.clip(where, 200)}` {what}")
    kind = obj.get("event")
    if kind == "message":
        text = obj.get("text")
        if not isinstance(text, str):
            raise FrameError("invalid_text", "`text` must be a string")
        if not text.strip():
            raise FrameError("empty_text", "`text` must not be empty")
        if len(text) > max_text:
            raise FrameError("text_too_long", f"`text` is longer than {max_text} characters")
        return UserText(text=text)
    if kind == "context":
        key = obj.get("key")
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_CONTEXT_KEY:
            raise FrameError(
                "invalid_context", f"`key` must be a non-empty string of at most {MAX_CONTEXT_KEY}"
            )
        if key.startswith("_"):
            raise FrameError("invalid_context", "context keys starting with '_' are reserved")
        if "value" not in obj:
            raise FrameError("invalid_context", "`value` is required (null clears the key)")
        value = obj["value"]
        if len(json.dumps(value)) > MAX_CONTEXT_VALUE_CHARS:
            raise FrameError(
                "invalid_context", f"`value` is larger than {MAX_CONTEXT_VALUE_CHARS} characters"
            )
        return SetContext(key=key, value=value)
    if kind == "ping":
        return Ping()
    if not isinstance(kind, str):
        raise FrameError("invalid_frame", "frames need an `event` string")
    raise FrameError("unknown_event", f"unknown event {kind[:64]!r}")
