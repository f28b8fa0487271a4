"""`parse_webhook`: WhatsApp Cloud API webhook bytes -> `WebhookBatch`. Pure.

Why so tolerant: a delivery that gets anything but 200 is retried by Meta for
seven days, to every subscribed app (facts §1.3). So the only bodies refused
(`BadPayload`, a 400) are ones that cannot be a WhatsApp delivery at all; a bad
item inside a good envelope is skipped and described in `problems`, and an
unknown type or field is carried through in `raw`.

Choices where the sources are thin (facts §1.5, §1.7):

* Edits and revokes are read as Meta/pywa show them: `type: "edit"` with
  `edit: {original_message_id, message: {type, <type>: …}}`, and `type: "revoke"`
  with `revoke: {original_message_id}`. An `edit`/`revoke` object is honoured
  under any `type`. On non-coexistence numbers an edit arrives as
  `type: "unsupported"`, `unsupported.type: "edit"`, with no original id: that
  stays an unsupported message (`edit` is None). No `message_edit` form was
  found in any source, so none is invented.
* Sender: `from`, else `from_user_id` (username-only BSUID users); a `system`
  message without either (BSUID change) falls back to `system.previous_user_id`,
  the identity the conversation is known by. `user_id` comes from
  `from_user_id`, else from the matched `contacts[]` entry.
* Contact name: the `contacts[]` entry whose `wa_id` or `user_id` matches the
  sender; if none matches and there is exactly one, that one (Meta warns that
  `wa_id` may not equal `from`).
* A reaction whose `emoji` is missing or empty is a removal (`emoji == ""`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from channels.whatsapp.errors import BadPayload
from channels.whatsapp.payloads import (
    MEDIA_KINDS,
    Change,
    WaEdit,
    WaError,
    WaMessage,
    WaReaction,
    WaRevoke,
    WaStatus,
    WaSystem,
    WebhookBatch,
)
from gateway.sanitizer import load_provider_json

__all__ = ["BadPayload", "parse_webhook"]

OBJECT = "whatsapp_business_account"
_INTEGER = re.compile(r"-?[0-9]{1,18}")
Parts = list[dict[str, Any]]


def parse_webhook(body: bytes | str) -> WebhookBatch:
    """Every entry, change, message and status of one delivery, in order."""
    entries = _envelope(body)
    problems: list[str] = []
    changes: list[Change] = []
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        raw_changes = entry.get("changes")
        if not isinstance(raw_changes, list):
            problems.append(f"{where}.changes: not a list")
            continue
        for j, raw in enumerate(raw_changes):
            change = _change(raw, _str(entry.get("id")), f"{where}.changes[{j}]", problems)
            if change is not None:
                changes.append(change)
    return WebhookBatch(objects=tuple(changes), problems=tuple(problems))


def _envelope(body: bytes | str) -> list[Any]:
    try:
        doc = load_provider_json(body)  # lone surrogates and NULs made safe here, once
    except (ValueError, RecursionError) as exc:
        raise BadPayload(f"webhook body is not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise BadPayload("webhook body is not a JSON object")
    if doc.get("object") != OBJECT:
        raise BadPayload(f"webhook object is {doc.get('object')!r}, expected {OBJECT!r}")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise BadPayload("webhook entry is not a list")
    return entries


def _change(raw: Any, waba_id: str | None, where: str, problems: list[str]) -> Change | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: not an object")
        return None
    value = raw.get("value")
    if not isinstance(value, dict):
        problems.append(f"{where}.value: not an object")
        return None
    field = _str(raw.get("field")) or ""
    metadata = _obj(value.get("metadata"))
    common: dict[str, Any] = {
        "field": field,
        "waba_id": waba_id,
        "phone_number_id": _str(metadata.get("phone_number_id")),
        "display_phone_number": _str(metadata.get("display_phone_number")),
        "raw": value,
    }
    if field != "messages":
        return Change(**common)
    contacts = [c for c in _list(value.get("contacts")) if isinstance(c, dict)]
    messages = []
    for k, item in enumerate(_items(value, "messages", where, problems)):
        message = _message(item, contacts, f"{where}.messages[{k}]", problems)
        if message is not None:
            messages.append(message)
    statuses = []
    for k, item in enumerate(_items(value, "statuses", where, problems)):
        status = _status(item, f"{where}.statuses[{k}]", problems)
        if status is not None:
            statuses.append(status)
    return Change(
        **common,
        messages=tuple(messages),
        statuses=tuple(statuses),
        errors=_errors(value.get("errors")),
    )


def _items(value: dict[str, Any], key: str, where: str, problems: list[str]) -> list[Any]:
    items = value.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        problems.append(f"{where}.{key}: not a list")
        return []
    return items


# -- messages -------------------------------------------------------------------------------


def _message(m: Any, contacts: list[dict[str, Any]], where: str, problems: list[str]) -> WaMessage | None:
    if not isinstance(m, dict):
        problems.append(f"{where}: not an object")
        return None
    wamid = _str(m.get("id"))
    if not wamid:
        problems.append(f"{where}: no id")
        return None
    kind = _str(m.get("type")) or _guess_type(m)
    system = _system(m) if kind == "system" else None
    user_id = _str(m.get("from_user_id"))
    sender = _str(m.get("from")) or user_id or (system.previous_user_id if system else None)
    if not sender:
        problems.append(f"{where} ({wamid}): no sender")
        return None
    contact = _match_contact(contacts, _str(m.get("from")), user_id)
    profile = _obj(contact.get("profile"))
    context = _obj(m.get("context"))
    text, parts = _content(kind, m)
    if referred := _obj(context.get("referred_product")):
        parts.append({"kind": "referred_product", **referred})
    reaction = _reaction(m) if kind == "reaction" else None
    edit = _edit(m)
    revoke = _revoke(m)
    if edit is not None:
        text = f"[edited] {edit.text}"
    elif revoke is not None:
        text = "[message deleted]"
    elif system is not None:
        text = system.body or f"[system: {system.type}]"
    referral = m.get("referral")
    return WaMessage(
        wamid=wamid,
        from_=sender,
        user_id=user_id or _str(contact.get("user_id")),
        contact_name=_str(profile.get("name")),
        contact_username=_str(profile.get("username")),
        timestamp=_int(m.get("timestamp")),
        type=kind,
        text=text,
        parts=tuple(parts),
        context_wamid=_str(context.get("id")),
        forwarded=context.get("forwarded") is True,
        frequently_forwarded=context.get("frequently_forwarded") is True,
        reaction=reaction,
        system=system,
        edit=edit,
        revoke=revoke,
        referral=referral if isinstance(referral, dict) else None,
        errors=_errors(m.get("errors")),
        raw=m,
    )


def _guess_type(m: dict[str, Any]) -> str:
    """`type` is missing: name it after the first content object present."""
    for key in ("text", *sorted(MEDIA_KINDS), "location", "contacts", "interactive", "button", "reaction"):
        if isinstance(m.get(key), dict | list):
            return key
    return "unknown"


def _match_contact(contacts: list[dict[str, Any]], wa_id: str | None, user_id: str | None) -> dict[str, Any]:
    for contact in contacts:
        if (wa_id and _str(contact.get("wa_id")) == wa_id) or (
            user_id and _str(contact.get("user_id")) == user_id
        ):
            return contact
    return contacts[0] if len(contacts) == 1 else {}


def _content(kind: str, m: dict[str, Any]) -> tuple[str, Parts]:
    """The agent-facing text and the structured parts of a message of type `kind`."""
    if kind in MEDIA_KINDS:
        return _media(kind, _obj(m.get(kind)))
    reader = _READERS.get(kind)
    if reader is not None:
        return reader(m)
    return f"[{kind} message]", []


def read_content(kind: str, m: dict[str, Any]) -> tuple[str, Parts]:
    """`_content` for other readers of the same message shapes (coexistence echoes)."""
    return _content(kind, m)


def _text(m: dict[str, Any]) -> tuple[str, Parts]:
    return _str(_obj(m.get("text")).get("body")) or "", []


def _media(kind: str, obj: dict[str, Any]) -> tuple[str, Parts]:
    part: dict[str, Any] = {
        "kind": kind,
        "id": _str(obj.get("id")),
        "mime_type": _str(obj.get("mime_type")),
        "caption": _str(obj.get("caption")),
        "sha256": _str(obj.get("sha256")),
        "filename": _str(obj.get("filename")),
    }
    if url := _str(obj.get("url")):
        part["url"] = url
    if kind == "audio":
        part["voice"] = obj.get("voice") is True
    if kind == "sticker":
        part["animated"] = obj.get("animated") is True
    if kind == "audio":
        label = "voice note" if part["voice"] else "audio"
    else:
        label = kind
    detail = " — ".join(s for s in (part["filename"], part["caption"]) if s)
    return (f"[{label}: {detail}]" if detail else f"[{label}]"), [part]


def _location(m: dict[str, Any]) -> tuple[str, Parts]:
    loc = _obj(m.get("location"))
    lat, lon = _float(loc.get("latitude")), _float(loc.get("longitude"))
    name, address = _str(loc.get("name")), _str(loc.get("address"))
    part = {
        "kind": "location",
        "latitude": lat,
        "longitude": lon,
        "name": name,
        "address": address,
        "url": _str(loc.get("url")),
    }
    where = f"{_coord(lat)},{_coord(lon)}" if lat is not None and lon is not None else ""
    label = ", ".join(s for s in (name, address) if s)
    inner = " ".join(s for s in (where, label) if s)
    return (f"[location: {inner}]" if inner else "[location]"), [part]


def _contacts(m: dict[str, Any]) -> tuple[str, Parts]:
    cards = [c for c in _list(m.get("contacts")) if isinstance(c, dict)]
    shown = [_card(c) for c in cards]
    noun = "contact" if len(cards) == 1 else "contacts"
    inner = ", ".join(s for s in shown if s)
    return (f"[{noun}: {inner}]" if inner else f"[{noun}]"), [{"kind": "contacts", "contacts": cards}]


def _card(card: dict[str, Any]) -> str:
    name = _obj(card.get("name"))
    full = _str(name.get("formatted_name")) or " ".join(
        s for s in (_str(name.get("first_name")), _str(name.get("last_name"))) if s
    )
    phones = [_str(_obj(p).get("phone")) for p in _list(card.get("phones"))]
    return " ".join(s for s in (full, next((p for p in phones if p), None)) if s)


def _interactive(m: dict[str, Any]) -> tuple[str, Parts]:
    obj = _obj(m.get("interactive"))
    kind = _str(obj.get("type")) or ""
    reply = _obj(obj.get(kind)) if kind else {}
    if kind in ("button_reply", "list_reply"):
        part: dict[str, Any] = {"kind": kind, "id": _str(reply.get("id")), "title": _str(reply.get("title"))}
        if kind == "list_reply":
            part["description"] = _str(reply.get("description"))
        return part["title"] or part["id"] or f"[{kind}]", [part]
    if kind == "nfm_reply":
        raw_json = reply.get("response_json")
        response: Any = raw_json
        if isinstance(raw_json, str):
            try:
                response = load_provider_json(raw_json)
            except (ValueError, RecursionError):
                response = raw_json
        shown = response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)
        flow = {"kind": "flow_response", "name": _str(reply.get("name")), "body": _str(reply.get("body"))}
        return f"[flow response: {shown}]", [{**flow, "response": response}]
    label = f"[interactive: {kind}]" if kind else "[interactive]"
    return label, [{"kind": "interactive", "type": kind or None, "data": obj}]


def _button(m: dict[str, Any]) -> tuple[str, Parts]:
    obj = _obj(m.get("button"))
    part = {"kind": "button", "payload": _str(obj.get("payload")), "text": _str(obj.get("text"))}
    return part["text"] or part["payload"] or "[button]", [part]


def _reaction_text(m: dict[str, Any]) -> tuple[str, Parts]:
    emoji = _str(_obj(m.get("reaction")).get("emoji"))
    return (f"[reaction: {emoji}]" if emoji else "[reaction removed]"), []


def _order(m: dict[str, Any]) -> tuple[str, Parts]:
    obj = _obj(m.get("order"))
    items = [i for i in _list(obj.get("product_items")) if isinstance(i, dict)]
    lines = []
    for item in items:
        line = f"{_shown(item.get('quantity'))} x {_shown(item.get('product_retailer_id'))}"
        if item.get("item_price") is not None:
            line += f" @ {_shown(item.get('item_price'))} {_str(item.get('currency')) or ''}".rstrip()
        lines.append(line)
    note = _str(obj.get("text"))
    text = f"[order: {'; '.join(lines)}]" if lines else "[order]"
    part = {"kind": "order", "catalog_id": _str(obj.get("catalog_id")), "text": note, "product_items": items}
    return (f"{text} {note}" if note else text), [part]


def _unsupported(m: dict[str, Any]) -> tuple[str, Parts]:
    what = _str(_obj(m.get("unsupported")).get("type"))
    return (f"[unsupported: {what}]" if what else "[unsupported message]"), []


def _no_parts(text: str) -> Callable[[dict[str, Any]], tuple[str, Parts]]:
    return lambda _m: (text, [])


_READERS: dict[str, Callable[[dict[str, Any]], tuple[str, Parts]]] = {
    "text": _text,
    "location": _location,
    "contacts": _contacts,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction_text,
    "order": _order,
    "unsupported": _unsupported,
    "system": _no_parts("[system]"),
    "edit": _no_parts("[edited]"),
    "revoke": _no_parts("[message deleted]"),
}


def _reaction(m: dict[str, Any]) -> WaReaction | None:
    obj = _obj(m.get("reaction"))
    wamid = _str(obj.get("message_id"))
    return WaReaction(wamid=wamid, emoji=_str(obj.get("emoji")) or "") if wamid else None


def _system(m: dict[str, Any]) -> WaSystem:
    obj = _obj(m.get("system"))
    return WaSystem(
        type=_str(obj.get("type")) or "",
        body=_str(obj.get("body")) or "",
        new_wa_id=_str(obj.get("wa_id")),
        new_user_id=_str(obj.get("user_id")),
        previous_user_id=_str(obj.get("previous_user_id")),
    )


def _edit(m: dict[str, Any]) -> WaEdit | None:
    obj = _obj(m.get("edit"))
    original = _str(obj.get("original_message_id"))
    if not original:
        return None
    inner = _obj(obj.get("message"))
    kind = _str(inner.get("type")) or _guess_type(inner)
    text, parts = _content(kind, inner)
    return WaEdit(original_wamid=original, type=kind, text=text, parts=tuple(parts))


def _revoke(m: dict[str, Any]) -> WaRevoke | None:
    original = _str(_obj(m.get("revoke")).get("original_message_id"))
    return WaRevoke(original_wamid=original) if original else None


# -- statuses and errors --------------------------------------------------------------------


def _status(s: Any, where: str, problems: list[str]) -> WaStatus | None:
    if not isinstance(s, dict):
        problems.append(f"{where}: not an object")
        return None
    wamid = _str(s.get("id"))
    status = _str(s.get("status"))
    if not wamid or not status:
        problems.append(f"{where}: no {'id' if not wamid else 'status'}")
        return None
    conversation = s.get("conversation")
    pricing = s.get("pricing")
    return WaStatus(
        wamid=wamid,
        status=status,
        timestamp=_int(s.get("timestamp")),
        recipient_id=_str(s.get("recipient_id")),
        recipient_user_id=_str(s.get("recipient_user_id")),
        errors=_errors(s.get("errors")),
        biz_opaque_callback_data=_str(s.get("biz_opaque_callback_data")),
        conversation=conversation if isinstance(conversation, dict) else None,
        pricing=pricing if isinstance(pricing, dict) else None,
        raw=s,
    )


def _errors(value: Any) -> tuple[WaError, ...]:
    out = []
    for e in _list(value):
        if not isinstance(e, dict):
            continue
        title = _str(e.get("title")) or ""
        out.append(
            WaError(
                code=_int(e.get("code")),
                title=title,
                message=_str(e.get("message")) or title,
                details=_str(_obj(e.get("error_data")).get("details")) or "",
                href=_str(e.get("href")),
                raw=e,
            )
        )
    return tuple(out)


# -- coercion: never trust a field's type ---------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    """Strings as given; numbers as text (ids sometimes arrive as numbers); else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str):
        return None
    try:
        f = float(value)
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _coord(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _shown(value: Any) -> str:
    return _str(value) or "?"
