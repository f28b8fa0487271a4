"""Typed failures of the WhatsApp channel.

    BadPayload (gateway BadRequest, 400)  the webhook body is not a WhatsApp envelope at all
    GraphError                            a Graph API call failed; `retryable` says what to do
    ├── TokenExpired         190 / HTTP 401: renew the token, do not retry blindly
    ├── RateLimited          130429, 131056, 4, 17, 32, 613, 80007 / HTTP 429: retry later
    ├── WindowClosed         131047: >24 h since the user wrote; only a template can go out
    ├── Undeliverable        131026: not a WhatsApp user, old client, ToS not accepted
    ├── TransientGraphError  5xx, 131000, 131057, `is_transient`, timeouts, connection errors
    ├── PermanentGraphError  every other 4xx: retrying the same request cannot succeed
    └── MediaTooLarge        a download exceeded the caller's byte limit

The outbox branches on the class (or just on `retryable`); `retry_after` is only
set when the server said so (a `Retry-After` header). The pair limit 131056 wants
4^attempt seconds between tries (facts §3): that schedule is the caller's, since
only the caller knows the attempt number.
"""

from __future__ import annotations

from gateway.errors import BadRequest


class BadPayload(BadRequest):
    """The webhook body cannot be a WhatsApp Business Account delivery."""

    code = "bad_payload"


class GraphError(Exception):
    """A Graph API call failed. Fields follow the Graph error envelope.

    `code`/`subcode` are Graph's numeric codes (None when the failure never reached
    Graph: a timeout, a refused connection, a non-JSON 502 from a proxy); `status`
    is the HTTP status (None without a response).
    """

    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        title: str = "",
        details: str = "",
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.title = title or message
        self.details = details
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.fbtrace_id = fbtrace_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, message={self.message!r})"
        )


class TokenExpired(GraphError):
    """190 or HTTP 401: the access token is expired, revoked or missing."""


class RateLimited(GraphError):
    """Throughput (130429), pair (131056) or API-call (4, 80007, …) limit hit."""

    default_retryable = True


class WindowClosed(GraphError):
    """131047: the 24-hour customer-service window is closed; send a template."""


class Undeliverable(GraphError):
    """131026: WhatsApp cannot deliver to this user at all."""


class TransientGraphError(GraphError):
    """Worth retrying with backoff: 5xx, 131000, 131057, timeouts, network errors.

    A timed-out *send* may still have been accepted by Meta; a retry can then
    deliver twice. Callers that care pass `biz_opaque` and reconcile on statuses.
    """

    default_retryable = True


class PermanentGraphError(GraphError):
    """Any other 4xx: bad parameters, unknown template, policy blocks, …"""


class MediaTooLarge(GraphError):
    """The media is larger than the caller allowed; nothing more was read."""
