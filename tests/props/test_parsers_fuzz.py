"""Property-based tests: the frame parsers and token checks never fail in unexpected ways."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.chat.protocol import FrameError, Ping, SetContext, UserText, parse_client_frame
from gateway.api.agent_socket import FrameError as AgentFrameError
from gateway.api.agent_socket import decode_frame
from gateway.auth import Auth, origin_allowed
from gateway.errors import Unauthorized
from gateway.settings import Settings
from gateway.store.records import TokenRecord

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_chat_parser_total_on_arbitrary_input(raw: bytes | str) -> None:
    try:
        frame = parse_client_frame(raw, max_text=50, max_bytes=200)
    except FrameError as exc:
        assert exc.code and exc.message
    else:
        assert isinstance(frame, UserText | SetContext | Ping)


@given(
    st.dictionaries(
        st.sampled_from(["event", "text", "key", "value", "x"]),
        json_values | st.sampled_from(["message", "context", "ping"]),
        max_size=4,
    )
)
def test_chat_parser_on_json_objects(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    try:
        frame = parse_client_frame(raw, max_text=50, max_bytes=10_000)
    except FrameError as exc:
        assert exc.code in {
            "invalid_text",
            "empty_text",
            "text_too_long",
            "invalid_context",
            "unknown_event",
            "invalid_frame",
            "invalid_json",  # NaN and Infinity (json.dumps writes them; they are not JSON)
        }
        return
    if isinstance(frame, UserText):
        assert obj["event"] == "message" and 0 < len(frame.text.strip()) and len(frame.text) <= 50
    elif isinstance(frame, SetContext):
        assert obj["event"] == "context" and frame.key == obj["key"]
    else:
        assert obj["event"] == "ping"


@given(st.text(min_size=1, max_size=50))
def test_valid_messages_round_trip(text: str) -> None:
    if not text.strip():
        return
    raw = json.dumps({"event": "message", "text": text})
    if "\x00" in text:  # never stored: refused (gateway/sanitizer.py)
        with pytest.raises(FrameError) as refused:
            parse_client_frame(raw, max_text=50, max_bytes=10_000)
        assert refused.value.code == "invalid_text"
        return
    frame = parse_client_frame(raw, max_text=50, max_bytes=10_000)
    assert frame == UserText(text=text)


@given(st.one_of(st.none(), st.text(max_size=80)), st.lists(st.text(max_size=30), max_size=4))
def test_origin_matching_is_total_and_never_crosses_schemes(origin: str | None, patterns: list[str]) -> None:
    allowed = origin_allowed(origin, patterns)
    if allowed:
        assert origin is not None
        scheme = origin.rstrip("/").lower().split("://", 1)[0]
        assert any(p.rstrip("/").lower().split("://", 1)[0] == scheme for p in patterns)


class _MemoryTokens:
    """A stand-in for the store's two token methods, in memory (for a fast property test)."""

    def __init__(self) -> None:
        self.rows: dict[str, TokenRecord] = {}
        self.used: set[str] = set()

    async def add_token(self, sha: str, record: TokenRecord) -> None:
        self.rows[sha] = record

    async def consume_token(self, sha: str) -> TokenRecord | None:
        if sha in self.used or sha not in self.rows:
            return None
        self.used.add(sha)
        return self.rows[sha]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.one_of(st.none(), st.text(max_size=250)), st.sampled_from(["chat", "stream"]))
def test_redeem_rejects_every_forged_token(token: str | None, channel: str) -> None:
    store = _MemoryTokens()
    auth = Auth(Settings.from_dict({}), store, env={})  # type: ignore[arg-type]

    async def scenario() -> None:
        real = await auth.mint(channel="chat", agent="demo")
        try:
            await auth.redeem(token, channel)
        except Unauthorized as exc:
            assert exc.code == "invalid_token"
        else:
            raise AssertionError("a token that was never minted was accepted")
        # The minted one works once, on its own channel only.
        if channel == "chat":
            assert (await auth.redeem(real, "chat")).agent_id == "demo"
            try:
                await auth.redeem(real, "chat")
            except Unauthorized:
                pass
            else:
                raise AssertionError("a token was accepted twice")

    asyncio.run(scenario())


@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(json.dumps),
    )
)
def test_agent_frame_decoder_is_total(raw: bytes | str) -> None:
    try:
        frame, request_id = decode_frame(raw, max_bytes=250)
    except AgentFrameError as exc:
        assert exc.code in {"frame_too_large", "invalid_json", "invalid_frame"}
    else:
        assert isinstance(frame, dict)
        assert request_id is None or (isinstance(request_id, str) and len(request_id) <= 64)


def test_deeply_nested_json_is_a_clear_error_not_a_crash() -> None:
    deep = "[" * 30_000 + "]" * 30_000
    try:
        parse_client_frame(deep, max_text=10, max_bytes=100_000)
    except FrameError as exc:
        assert exc.code == "invalid_json"
    try:
        decode_frame(deep, max_bytes=100_000)
    except AgentFrameError as exc:
        assert exc.code == "invalid_json"
