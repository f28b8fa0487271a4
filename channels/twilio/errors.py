"""Typed failures of Twilio's REST API."""

from __future__ import annotations

from typing import Any


class TwilioError(Exception):
    """A REST call failed. `code` is Twilio's error code when it sent one (e.g. 21211)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        # A read timeout: Twilio may have accepted the request; never resend blindly.
        self.maybe_sent = maybe_sent
        self.details = details or {}


# Twilio error codes (https://www.twilio.com/docs/api/errors) that the gateway treats specially.
OUTSIDE_WINDOW = 63016  # WhatsApp: free-form message outside the 24-hour window
RATE_LIMITED = 20429
