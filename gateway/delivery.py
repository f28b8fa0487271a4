"""The port a store-and-forward channel (WhatsApp, SMS) implements for replies.

The conversation service renders a finished reply into provider payloads with
`render` (pure, inside the turn) and stores them in the outbox in the same
transaction as the reply; the outbox later calls `send` for each, with retries.
A session's provider is the prefix of its `endpoint` (`whatsapp:<phone_number_id>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.store.records import MessageRecord, OutboxItem, SessionRecord


class SendFailed(Exception):
    """A send did not go through. `retryable` sends are tried again with backoff."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
        closes_window: bool = False,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.details = details or {}
        self.closes_window = closes_window
        # The provider may have accepted it (a read timeout): never retried blindly.
        self.maybe_sent = maybe_sent

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            **({"details": self.details} if self.details else {}),
        }


class Delivery(Protocol):
    def render(
        self,
        session: SessionRecord,
        text: str,
        reply_to: MessageRecord | None,
        *,
        max_parts: int | None = None,
    ) -> list[dict[str, Any]]:
        """The provider payloads (one per part) that carry `text` to the session's contact,
        at most `max_parts` of them when the provider honours a bound (None: no bound)."""
        ...

    async def send(self, item: OutboxItem) -> str:
        """Send one payload; return the provider's message id or raise SendFailed."""
        ...

    async def typing(self, session: SessionRecord, message: MessageRecord) -> None:
        """Best effort: show that a reply is coming (e.g. mark read + typing indicator)."""
        ...

    def window_open(self, session: SessionRecord, now_ms: int) -> bool:
        """May a free-form message be sent now (WhatsApp's 24-hour window)?"""
        ...


@dataclass(frozen=True, slots=True)
class Template:
    """A provider-approved message (WhatsApp template, Twilio Content) ready to queue."""

    name: str  # shown as the message text: `[template: <name>]`
    payload: dict[str, Any]
    part: dict[str, Any]  # stored on the message (`parts`)


@runtime_checkable
class TemplateSender(Protocol):
    def template(self, session: SessionRecord, spec: dict[str, Any]) -> Template:
        """The provider payload for `spec` (the request body); BadRequest when it is malformed."""
        ...


def provider_of(session: SessionRecord) -> str | None:
    return session.endpoint.split(":", 1)[0] if session.endpoint else None


def endpoint_address(session: SessionRecord | OutboxItem) -> str:
    """The business side of an endpoint: `whatsapp:<pnid>` -> pnid, `twilio:<number>` -> number."""
    endpoint = session.endpoint or ""
    return endpoint.split(":", 1)[1] if ":" in endpoint else ""
