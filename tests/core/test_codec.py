"""The one codec every bus reader uses: an event encoded once, its header filterable
without the JSON, and decoded to the frozen class of its type."""

from __future__ import annotations

import dataclasses

import pytest

from gateway import events as ev
from gateway.codec import decode_envelope, decode_event, encode_event
from gateway.events import Event
from gateway.types import EventType


def test_every_event_type_decodes_to_its_own_frozen_class() -> None:
    classes = set()
    for kind in EventType:
        typed = decode_event(encode_event(Event(type=kind, agent="a", session_id="s", seq=3, data={"x": 1})))
        assert not isinstance(typed, ev.OtherEvent), kind
        assert (typed.agent, typed.session_id, typed.seq, typed.data) == ("a", "s", 3, {"x": 1})
        with pytest.raises(dataclasses.FrozenInstanceError):
            typed.agent = "b"  # type: ignore[misc]
        classes.add(type(typed))
    assert len(classes) == len(EventType)


def test_typed_fields_come_from_the_wire_object() -> None:
    raw = encode_event(
        Event(
            type=EventType.BOT_MESSAGE,
            agent="a",
            session_id="s",
            channel="chat",
            seq=9,
            data={
                "messageId": "m",
                "text": "hé",
                "source": "agent",
                "inReplyTo": "u",
                "answered": ["u", "v"],
            },
        )
    )
    typed = decode_event(raw)
    assert typed == ev.BotMessage(
        seq=9,
        ts=typed.ts,
        agent="a",
        session_id="s",
        channel="chat",
        data={"messageId": "m", "text": "hé", "source": "agent", "inReplyTo": "u", "answered": ["u", "v"]},
        message_id="m",
        text="hé",
        source="agent",
        in_reply_to="u",
        answered=("u", "v"),
    )
    token = decode_event(encode_event(Event(type=EventType.BOT_TOKEN, agent="a", data={"messageId": "m"})))
    assert isinstance(token, ev.BotToken) and token.seq is None and token.text == ""


def test_an_unknown_type_or_wrongly_typed_field_never_breaks_a_reader() -> None:
    other = decode_event(encode_event(Event(type="future.thing", agent="a", data={"k": "v"})))
    assert isinstance(other, ev.OtherEvent) and other.type == "future.thing" and other.data == {"k": "v"}
    odd = decode_event(
        encode_event(Event(type=EventType.SESSION_ERROR, agent="a", data={"code": 5, "answered": "x"}))
    )
    assert isinstance(odd, ev.SessionError) and odd.code is None and odd.answered == ()


def test_an_envelope_is_decoded_and_framed_once_for_every_reader() -> None:
    env = decode_envelope(
        encode_event(Event(type=EventType.USER_MESSAGE, agent="a", seq=4, data={"text": "t"}))
    )
    assert env.event() is env.event()
    assert env.sse_frame() is env.sse_frame()
    assert env.sse_frame().startswith(b"id: 4\nevent: user.message\ndata: {")
