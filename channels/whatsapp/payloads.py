"""Typed, frozen views of a WhatsApp Cloud API webhook delivery.

Built only by `parse.parse_webhook`. Every value Meta sends is kept: what we
understand gets a field, the rest stays in `raw`. Unknown message types and
statuses are passed through as given (strings, not enums) so that a new Meta
feature degrades to "[xyz message]" instead of a 5xx that Meta would retry for
seven days.

Shapes of `WaMessage.parts` (JSON-ready dicts, keyed by `kind`):

    image|video|audio|document|sticker  {kind, id, mime_type, caption, sha256, filename, url?,
                                         voice? (audio), animated? (sticker)}
    location                            {kind, latitude, longitude, name, address, url}
    contacts                            {kind, contacts: [<Meta contact card>, ...]}
    order                               {kind, catalog_id, text, product_items: [...]}
    button_reply | list_reply           {kind, id, title, description? (list)}
    flow_response                       {kind, name, body, response (parsed response_json or the raw string)}
    button                              {kind, payload, text}   (template quick reply)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.events import ContactRef
from gateway.types import Channel

MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})

# WhatsApp message type -> the `type` of a `user.message` event (PROTOCOL §2).
_PROTOCOL_TYPES = {
    "text": "text",
    "audio": "audio",
    "image": "image",
    "video": "video",
    "document": "document",
    "sticker": "sticker",
    "location": "location",
    "contacts": "contacts",
    "interactive": "interactive",
    "button": "interactive",
    "reaction": "reaction",
    "edit": "text",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class WaError:
    """One entry of an `errors` array (value-, message- or status-level)."""

    code: int | None
    title: str
    message: str
    details: str
    href: str | None = None
    raw: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class WaReaction:
    """A reaction to `wamid` (one of *our* messages). `emoji == ""` means removed."""

    wamid: str
    emoji: str

    @property
    def removed(self) -> bool:
        return not self.emoji


@dataclass(frozen=True, kw_only=True, slots=True)
class WaSystem:
    """A `system` message: number / user-id changes and identity changes.

    `new_wa_id` is set for `user_changed_number` / `customer_changed_number`;
    `new_user_id`/`previous_user_id` for BSUID changes (`user_changed_user_id`).
    """

    type: str
    body: str
    new_wa_id: str | None = None
    new_user_id: str | None = None
    previous_user_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WaEdit:
    """The user edited `original_wamid`; `type`/`text`/`parts` describe the new content."""

    original_wamid: str
    type: str
    text: str
    parts: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class WaRevoke:
    """The user deleted `original_wamid` (coexistence numbers only)."""

    original_wamid: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WaMessage:
    """One inbound message.

    `from_` is the `from` field (the user's phone / wa_id) or, for users who only
    have a BSUID, `from_user_id`. `user_id` is the BSUID whenever Meta sent one.
    `sender_key` is what a conversation should be keyed on (facts §1.7: BSUID
    first, wa_id as fallback). `text` is what the agent reads; the structured
    content is in `parts`.
    """

    wamid: str
    from_: str
    user_id: str | None
    contact_name: str | None
    timestamp: int | None
    type: str
    text: str
    parts: tuple[Mapping[str, Any], ...] = ()
    contact_username: str | None = None
    context_wamid: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    reaction: WaReaction | None = None
    system: WaSystem | None = None
    edit: WaEdit | None = None
    revoke: WaRevoke | None = None
    referral: Mapping[str, Any] | None = None
    errors: tuple[WaError, ...] = ()
    raw: Mapping[str, Any]

    @property
    def sender_key(self) -> str:
        return self.user_id or self.from_

    @property
    def is_voice_note(self) -> bool:
        return any(p.get("kind") == "audio" and p.get("voice") for p in self.parts)

    @property
    def media(self) -> Mapping[str, Any] | None:
        """The first downloadable media part, if any."""
        return next((p for p in self.parts if p.get("kind") in MEDIA_KINDS and p.get("id")), None)

    @property
    def protocol_type(self) -> str:
        """The `user.message` type of PROTOCOL §2; anything without a match is `unsupported`."""
        return _PROTOCOL_TYPES.get(self.type, "unsupported")

    def contact(self) -> ContactRef:
        return ContactRef(channel=Channel.WHATSAPP, address=self.sender_key, name=self.contact_name)


@dataclass(frozen=True, kw_only=True, slots=True)
class WaStatus:
    """Delivery status of one of our outbound messages. `status` is kept as given."""

    wamid: str
    status: str
    timestamp: int | None
    recipient_id: str | None
    recipient_user_id: str | None = None
    errors: tuple[WaError, ...] = ()
    biz_opaque_callback_data: str | None = None
    conversation: Mapping[str, Any] | None = None
    pricing: Mapping[str, Any] | None = None
    raw: Mapping[str, Any]

    @property
    def error(self) -> WaError | None:
        return self.errors[0] if self.errors else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One `entry[].changes[]` item.

    Non-`messages` fields (template updates, account alerts, echoes, …) are kept
    with empty `messages`/`statuses` and their `value` in `raw`; they usually
    carry no `metadata`, so `phone_number_id` may be None.
    """

    field: str
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None
    messages: tuple[WaMessage, ...] = ()
    statuses: tuple[WaStatus, ...] = ()
    errors: tuple[WaError, ...] = ()
    raw: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookBatch:
    """A whole delivery: every change of every entry, in order.

    `problems` lists items that were skipped or fields that were unusable
    (e.g. "entry[0].changes[0].messages[2]: no id"); log them, don't fail on them.
    """

    objects: tuple[Change, ...]
    problems: tuple[str, ...] = ()

    def messages(self) -> Iterator[tuple[Change, WaMessage]]:
        for change in self.objects:
            for message in change.messages:
                yield change, message

    def statuses(self) -> Iterator[tuple[Change, WaStatus]]:
        for change in self.objects:
            for status in change.statuses:
                yield change, status
