"""Identifier minting. Message ids sort by creation time (PROTOCOL §1: `msg_<sortable id>`)."""

from __future__ import annotations

import secrets
import time

from gateway.types import SESSION_PREFIX, Channel

_last = [0]


def message_id() -> str:
    """`msg_` + 13 hex digits of microseconds + 6 random hex: sortable, and strictly
    increasing within a process (a clock that repeats or steps back is nudged)."""
    now = max(time.time_ns() // 1000, _last[0] + 1)
    _last[0] = now
    return f"msg_{now:013x}{secrets.token_hex(3)}"


def session_id(channel: Channel) -> str:
    return f"{SESSION_PREFIX[channel]}-{secrets.token_hex(6)}"


def contact_id() -> str:
    return f"ct_{secrets.token_hex(8)}"


def key_id() -> str:
    return f"key_{secrets.token_hex(6)}"
