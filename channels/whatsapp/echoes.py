"""Coexistence echoes: what the business wrote in the WhatsApp Business app on the same number.

A number onboarded to the Cloud API *and* still used in the WhatsApp Business app
(coexistence) reports every message the business sends from the app (or a linked
device) in an `smb_message_echoes` change: `value.message_echoes[]`, each
`{from (business number), to (the user), id, timestamp, type, <type>: {…}}`. The
gateway stores each one as a human message in that contact's session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.whatsapp.parse import read_content
from channels.whatsapp.payloads import Change

FIELD = "smb_message_echoes"


@dataclass(frozen=True, kw_only=True, slots=True)
class WaEcho:
    wamid: str
    to: str  # the contact's key: BSUID when Meta sent one, else the number without "+"
    timestamp: int | None
    type: str
    text: str
    parts: tuple[Mapping[str, Any], ...] = ()
    revoked_wamid: str | None = None  # the business deleted one of its messages
    raw: Mapping[str, Any]


def parse_echoes(change: Change) -> tuple[list[WaEcho], list[str]]:
    """The echoes of one change, and the problems of the items skipped."""
    if change.field != FIELD:
        return [], []
    items = change.raw.get("message_echoes")
    if not isinstance(items, list):
        return [], ([] if items is None else ["message_echoes: not a list"])
    out: list[WaEcho] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"message_echoes[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: not an object")
            continue
        wamid, to = _str(item.get("id")), _str(item.get("to_user_id")) or _str(item.get("to"))
        if not wamid or not to:
            problems.append(f"{where}: no {'id' if not wamid else 'recipient'}")
            continue
        kind = _str(item.get("type")) or "unknown"
        revoke = item.get("revoke")
        revoked = _str(revoke.get("original_message_id")) if isinstance(revoke, dict) else None
        text, parts = read_content(kind, item)
        out.append(
            WaEcho(
                wamid=wamid,
                to=to.lstrip("+"),
                timestamp=_int(item.get("timestamp")),
                type=kind,
                text=text,
                parts=tuple(parts),
                revoked_wamid=revoked,
                raw=item,
            )
        )
    return out, problems


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 18:
        return int(value)
    return None
