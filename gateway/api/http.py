"""Request parsing and error rendering shared by every route."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import sanitizer
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, RateLimited

log = logging.getLogger("gateway.api")


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """Read a body, refusing it (413) as soon as it is larger than `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length", code="invalid_content_length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, *, body: bytes | None = None) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise BadRequest(
            f"expected Content-Type: application/json (got {ctype or 'none'!r})",
            code="unsupported_media_type",
            status=415,
        ) from None
    if body is None:
        body = await read_body(request, limit)
    try:
        obj = sanitizer.parse_json(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    # Nothing unsafe anywhere in a body, whatever reads it later (sanitizer.py says why).
    found = sanitizer.find_problem(obj, "")
    if found is not None:
        where, what = found
        raise BadRequest(f"`{sanitizer.clip(where, 200)}` {what}", code="invalid_field")
    return obj


def opt_str(obj: dict[str, Any], key: str, *, max_len: int = 256) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(
            f"`{key}` must be a non-empty string of at most {max_len} characters", code="invalid_field"
        )
    return value


def opt_dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"`{key}` must be a JSON object", code="invalid_field")
    if len(json.dumps(value)) > 16_384:
        raise BadRequest(f"`{key}` is larger than 16 KB", code="invalid_field")
    return value


async def on_gateway_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    status = exc.status if 400 <= exc.status < 600 else 500
    response = error(status, exc.code, exc.message)
    if isinstance(exc, RateLimited):
        response.headers["retry-after"] = str(exc.retry_after)
    return response


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


DATABASE_RETRY_AFTER = "5"


def database_down(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection: not a bug, a 503.

    Nothing was committed (a failed transaction rolls back), so the caller must try
    again: Meta and Twilio redeliver a webhook that got no 2xx, and the dedupe key
    makes the redelivery count once.
    """
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unavailable() -> JSONResponse:
    response = error(503, "database_unavailable", "the database is unreachable; nothing was stored: retry")
    response.headers["retry-after"] = DATABASE_RETRY_AFTER
    return response


async def on_crash(request: Request, exc: Exception) -> Response:
    if database_down(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return unavailable()
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, "internal", "internal error (a bug: it has been logged)")


class CrashGuard:
    """The last resort: an exception no handler took becomes a logged JSON 500.

    Starlette's own last-resort handler answers the 500 and then re-raises, and
    uvicorn answers a re-raised exception by closing the connection: a client on
    keep-alive would lose it for one bad request. Here the exception ends with the
    answer. (A response already under way cannot be repaired; it is cut.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tap(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tap)
        except Exception as exc:
            if database_down(exc):
                log.warning(
                    "database unavailable on %s %s: %s",
                    scope.get("method"),
                    scope.get("path"),
                    type(exc).__name__,
                )
                if started:
                    raise
                await unavailable()(scope, receive, send)
                return
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            await error(500, "internal", "internal error (a bug: it has been logged)")(scope, receive, send)
