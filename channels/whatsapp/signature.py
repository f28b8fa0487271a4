"""Webhook authenticity: Meta's `X-Hub-Signature-256` and the subscription verify token.

The signature is HMAC-SHA256 over the *raw* request bytes with the app secret,
sent as `sha256=<lowercase hex>` (facts §1.2). Never verify a re-serialized body:
Meta signs its own escaped-unicode JSON, which a round-trip would not reproduce.

Several secrets are accepted so an app secret can be rotated without downtime;
the matching one is returned so callers can log which is still in use. Every
candidate is compared (no early exit) with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

PREFIX = "sha256="
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def sign(raw: bytes, secret: str) -> str:
    """The header value Meta would send for `raw` (for tests and docs)."""
    return PREFIX + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify_signature(raw: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """The secret whose signature matches `header`, or None (missing, malformed, wrong).

    Empty secrets are ignored: an unset secret must never make an unsigned
    (or empty-key signed) request pass.
    """
    if not header:
        return None
    header = header.strip()
    if header[: len(PREFIX)].lower() != PREFIX:
        return None
    given = header[len(PREFIX) :]
    if not _HEX64.fullmatch(given):
        return None
    expected = bytes.fromhex(given)
    found: str | None = None
    for secret in secrets:
        if not secret:
            continue
        digest = hmac.new(secret.encode(), raw, hashlib.sha256).digest()
        if hmac.compare_digest(digest, expected) and found is None:
            found = secret
    return found


def verify_token_matches(given: str | None, configured: Sequence[str]) -> bool:
    """Whether the `hub.verify_token` of the subscription handshake is one of ours."""
    if not given:
        return False
    probe = given.encode("utf-8", "surrogatepass")
    matched = False
    for token in configured:
        if token and hmac.compare_digest(probe, token.encode("utf-8", "surrogatepass")):
            matched = True
    return matched
