"""Signed but arbitrary Twilio webhooks and relay frames never get a 500 or crash a call."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.twilio.helpers import ACCOUNT_SID, CALLER, SMS_NUMBER, WA_NUMBER, signed_post, twilio_gateway
from tests.twilio.relay_client import connected_call

KEYS = [
    "CallSid",
    "MessageSid",
    "AccountSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "MediaUrl9",
    "CallStatus",
    "CallDuration",
    "SessionStatus",
    "HandoffData",
    "ErrorCode",
    "MessageStatus",
    "Latitude",
    "Longitude",
    "ButtonText",
    "ButtonPayload",
    "WaId",
    "ProfileName",
    "NumSegments",
    "Direction",
    "SipResponseCode",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            ACCOUNT_SID,
            CALLER,
            SMS_NUMBER,
            WA_NUMBER,
            "whatsapp:+15557654321",
            "completed",
            "failed",
            "in-progress",
            "busy",
            "no-answer",
            "undelivered",
            "63016",
            "-1",
            "1e309",
            "NaN",
            "99999999999",
            '{"action":"forward","to":"+15558675309"}',
            '{"action":"forward"}',
            "[]",
            "",
            "CA1",
            "SM1",
        ]
    ),
    st.text(max_size=40),
)
FORMS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=10)
PATHS = st.sampled_from(
    [
        "/twilio/voice",
        "/twilio/voice/status",
        "/twilio/voice/action",
        "/twilio/messaging",
        "/twilio/messaging/status",
        "/twilio/messaging/status?k=msg_x%3A0",
        "/twilio/voice/status?session=call-x",
    ]
)


def samples(strategy: SearchStrategy[Any], n: int) -> list[Any]:
    """`n` examples drawn by Hypothesis (derandomized: the same on every run), to replay
    against a live server (Hypothesis cannot drive async tests itself)."""
    out: list[Any] = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


async def test_signed_arbitrary_forms_get_an_answer_never_a_500(sqlite_url: str) -> None:
    answers: list[int] = []
    async with twilio_gateway(sqlite_url, phone={"ringing_timeout_seconds": 0.1}) as (g, _):
        for path, form in samples(st.tuples(PATHS, FORMS), 200):
            r = await signed_post(g, path, form)
            answers.append(r.status_code)
            assert r.status_code < 500, (path, form, r.text)
        async with g.client() as c:
            assert (await c.get("/healthz")).status_code == 200
    assert len(answers) >= 100 and set(answers) - {200, 204} != set()


FRAMES = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "voicePrompt",
                "last",
                "digit",
                "utteranceUntilInterrupt",
                "durationUntilInterruptMs",
                "description",
                "lang",
            ]
        ),
        st.one_of(
            st.sampled_from(["prompt", "dtmf", "interrupt", "error", "setup", "info"]),
            st.text(max_size=12),
            st.integers(),
            st.booleans(),
            st.none(),
        ),
        max_size=5,
    ).map(json.dumps),
    st.text(max_size=30),
)


async def test_arbitrary_relay_frames_never_end_the_call(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "0" * 32) as (relay, sid):
        for frame in samples(FRAMES, 200):
            await relay.send(frame)
        # Whatever came before, the call still answers (skip what earlier frames caused).
        await relay.send({"type": "prompt", "voicePrompt": "still there?", "last": True})
        seen: list[Any] = []
        while True:
            frame = await relay.recv()
            seen.append(frame)
            if frame.get("type") == "text" and "still there?" in "".join(
                f.get("token", "") for f in seen if f.get("type") == "text"
            ):
                break
        session = await g.runtime.store.session(sid)
        assert session is not None and session.active
