"""`X-Twilio-Signature`: which URL Twilio signed, and whether a request matches it.

Twilio signs the URL *it* requested (scheme, host, path and query as configured in
its console) plus the sorted form parameters, with HMAC-SHA1 under the account's
auth token. Behind a proxy the gateway sees another URL, so the public one is
rebuilt from `server.public_url` or, with `trust_proxy`, from X-Forwarded-Proto
and X-Forwarded-Host. The check itself is the `twilio` package's RequestValidator,
which also tries the URL with and without the default port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import URL, Headers
from twilio.request_validator import RequestValidator

from gateway.settings import ServerConfig


def public_url(url: URL, headers: Headers, server: ServerConfig, *, websocket: bool = False) -> str:
    """The URL Twilio used to reach this request (what it signed)."""
    scheme, netloc = url.scheme, url.netloc
    if server.trust_proxy:
        proto = headers.get("x-forwarded-proto")
        host = headers.get("x-forwarded-host")
        if proto:
            scheme = proto.split(",", 1)[0].strip().lower()
        if host:
            netloc = host.split(",", 1)[0].strip()
        elif proto:
            netloc = headers.get("host", netloc)
    elif server.public_url:
        base = urlsplit(server.public_url)
        scheme, netloc = base.scheme or scheme, base.netloc or netloc
    if websocket:
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    else:
        scheme = {"wss": "https", "ws": "http"}.get(scheme, scheme)
    path = url.path
    query = f"?{url.query}" if url.query else ""
    return f"{scheme}://{netloc}{path}{query}"


def matching_token(url: str, params: Any, signature: str | None, tokens: Iterable[str]) -> str | None:
    """The auth token that signed this request, or None (missing or wrong signature).

    `params` is the form as a multi-dict (`getlist`), so repeated keys are signed
    as Twilio signs them.
    """
    if not signature:
        return None
    for token in tokens:
        if token and RequestValidator(token).validate(url, params, signature):
            return token
    return None


def sign(token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """What Twilio would send as X-Twilio-Signature (used by tests and the dev tools)."""
    return str(RequestValidator(token).compute_signature(url, dict(params or {})))
