"""The relay frame parser and the signature helpers, without a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import URL, Headers

from channels.twilio import relay_protocol as rp
from channels.twilio.signature import matching_token, public_url, sign
from gateway.settings import ServerConfig

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "voicePrompt",
                "last",
                "digit",
                "callSid",
                "utteranceUntilInterrupt",
                "durationUntilInterruptMs",
                "customParameters",
                "lang",
                "x",
            ]
        ),
        JSONISH,
        max_size=6,
    )
    | JSONISH
)
def test_any_json_parses_or_raises_frame_error(value: object) -> None:
    if isinstance(value, dict) and "type" not in value and value:
        value = {**value, "type": "prompt"}
    try:
        rp.parse_frame(json.dumps(value))
    except rp.FrameError:
        pass


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_frame_error(raw: bytes) -> None:
    try:
        rp.parse_frame(raw)
    except rp.FrameError:
        pass


def test_frames_as_twilio_documents_them() -> None:
    setup = rp.parse_frame(
        json.dumps(
            {
                "type": "setup",
                "sessionId": "VX1",
                "callSid": "CA1",
                "accountSid": "AC1",
                "from": "+15551230000",
                "to": "+15550001111",
                "direction": "inbound",
                "customParameters": {"sessionId": "call-1", "agent": "support"},
            }
        )
    )
    assert isinstance(setup, rp.Setup) and setup.parameters["agent"] == "support"
    assert rp.parse_frame('{"type":"prompt","voicePrompt":"hi","lang":"en-US","last":true}') == rp.Prompt(
        "hi", "en-US", True
    )
    interrupt = rp.parse_frame(
        '{"type":"interrupt","utteranceUntilInterrupt":"Hel","durationUntilInterruptMs":"460"}'
    )
    assert interrupt == rp.Interrupt("Hel", 460)
    assert rp.parse_frame('{"type":"info","name":"tokensPlayed"}') == rp.Unknown("info")
    for bad in ('{"type":"setup"}', '{"type":"dtmf","digit":""}', "[1]", '{"type":1}', "x" * 70_000):
        with pytest.raises(rp.FrameError):
            rp.parse_frame(bad)
    assert rp.end({"to": "+1"}) == {"type": "end", "handoffData": '{"to": "+1"}'}


def test_signature_known_answer_vector_and_port_variants() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert sign("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert matching_token(url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", ["other", "12345"]) == "12345"
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert matching_token(with_port, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", ["12345"]) == "12345"
    assert matching_token(url, {**params, "Digits": "9"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", ["12345"]) is None
    assert matching_token(url, params, None, ["12345"]) is None


def test_public_url_from_settings_or_a_trusted_proxy() -> None:
    seen = URL("http://127.0.0.1:8080/twilio/voice?x=1")
    headers = Headers(
        {"x-forwarded-proto": "https", "x-forwarded-host": "gw.example.com", "host": "127.0.0.1:8080"}
    )
    assert public_url(seen, headers, ServerConfig()) == "http://127.0.0.1:8080/twilio/voice?x=1"
    configured = ServerConfig(public_url="https://gw.example.com")
    assert public_url(seen, headers, configured) == "https://gw.example.com/twilio/voice?x=1"
    trusted = ServerConfig(trust_proxy=True)
    assert public_url(seen, headers, trusted) == "https://gw.example.com/twilio/voice?x=1"
    relay = URL("ws://127.0.0.1:8080/twilio/relay")
    assert public_url(relay, headers, configured, websocket=True) == "wss://gw.example.com/twilio/relay"
    assert (
        public_url(relay, Headers({}), ServerConfig(), websocket=True) == "ws://127.0.0.1:8080/twilio/relay"
    )
