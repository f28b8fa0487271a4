"""One exception tree for the gateway.

    GatewayError                      base; carries an HTTP status and a stable code
    ├── ConfigError                   bad gateway.toml / environment (startup only)
    ├── SchemaOutOfDate               database needs `gateway migrate`
    ├── DatabaseUnavailable           database_url cannot be reached or opened (startup)
    ├── BadRequest (400)              malformed input: JSON, fields, text limits
    │   └── PayloadTooLarge (413)
    ├── Unauthorized (401)            missing / wrong API key or token
    ├── Forbidden (403)               key or origin not allowed for this agent
    ├── NotFound (404)                unknown agent / session
    ├── Conflict (409)                e.g. writing to an ended session
    ├── RateLimited (429)             a key or origin over its rate (with Retry-After)
    └── AgentError (502)              the agent (LLM, webhook, process) failed a turn

Routes turn a GatewayError into `{"error": {"code", "message"}}`; anything else is
a bug and is logged as such.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ConfigError(GatewayError):
    code = "config"


class SchemaOutOfDate(GatewayError):
    code = "schema_out_of_date"


class DatabaseUnavailable(GatewayError):
    code = "database_unavailable"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class AgentError(GatewayError):
    status = 502
    code = "agent_error"
