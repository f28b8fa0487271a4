"""X-Hub-Signature-256 and verify-token checks."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from channels.whatsapp.signature import sign, verify_signature, verify_token_matches
from tests.whatsapp import fixture_bytes

SECRET = "0123456789abcdef0123456789abcdef"
OLD = "old-app-secret"


def test_sign_matches_a_plain_hmac_over_the_raw_bytes() -> None:
    raw = fixture_bytes("reaction")  # contains a raw 👍: bytes, not re-serialized JSON
    expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert sign(raw, SECRET) == expected


def test_known_vector() -> None:
    # HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog"), RFC-style published value.
    raw = b"The quick brown fox jumps over the lazy dog"
    assert sign(raw, "key") == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_valid_signature_returns_the_matching_secret() -> None:
    raw = fixture_bytes("text")
    assert verify_signature(raw, sign(raw, SECRET), [SECRET]) == SECRET
    assert verify_signature(raw, sign(raw, OLD), [SECRET, OLD]) == OLD
    assert verify_signature(raw, sign(raw, SECRET).upper().replace("SHA256=", "sha256="), [SECRET]) == SECRET
    assert verify_signature(raw, "  " + sign(raw, SECRET) + " ", [SECRET]) == SECRET


def test_invalid_signatures() -> None:
    raw = fixture_bytes("text")
    good = sign(raw, SECRET)
    assert verify_signature(raw, None, [SECRET]) is None
    assert verify_signature(raw, "", [SECRET]) is None
    assert verify_signature(raw, good, []) is None
    assert verify_signature(raw, good, [""]) is None
    assert verify_signature(raw, good, [OLD]) is None
    assert verify_signature(raw + b" ", good, [SECRET]) is None
    assert verify_signature(raw, good.removeprefix("sha256="), [SECRET]) is None
    assert verify_signature(raw, "sha1=" + good[7:], [SECRET]) is None
    assert verify_signature(raw, good[:-1], [SECRET]) is None
    assert verify_signature(raw, good + "0", [SECRET]) is None
    assert verify_signature(raw, good[:-1] + "g", [SECRET]) is None
    assert verify_signature(raw, "sha256=" + "é" * 64, [SECRET]) is None


def test_empty_secret_never_validates_an_empty_key_signature() -> None:
    raw = b"{}"
    assert verify_signature(raw, sign(raw, ""), ["", SECRET]) is None


@given(st.binary(max_size=200), st.text(max_size=80))
def test_any_header_is_safe(raw: bytes, header: str) -> None:
    assert verify_signature(raw, header, [SECRET]) is None or header.strip().lower().startswith("sha256=")


@given(st.binary(max_size=200), st.text(min_size=1, max_size=30))
def test_round_trip(raw: bytes, secret: str) -> None:
    assert verify_signature(raw, sign(raw, secret), [secret]) == secret


def test_verify_token() -> None:
    assert verify_token_matches("tok", ["tok"])
    assert verify_token_matches("tok", ["other", "tok"])
    assert not verify_token_matches("tok", ["other"])
    assert not verify_token_matches("", [""])
    assert not verify_token_matches(None, ["tok"])
    assert not verify_token_matches("tok", [])
    assert not verify_token_matches("to", ["tok"])
    assert not verify_token_matches("\ud800", ["tok"])
    assert verify_token_matches("héllo", ["héllo"])
