"""parse_webhook over realistic deliveries, and its tolerance of everything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.whatsapp.parse import BadPayload, parse_webhook
from channels.whatsapp.payloads import WaMessage, WaStatus, WebhookBatch
from gateway.errors import BadRequest
from gateway.types import Channel
from tests.whatsapp import FIXTURES, fixture_bytes

PNID = "106540352242922"
USER = "16505551234"
BSUID = "US.13491208655302741918"
OUTBOUND = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI3NjQwNzA0RUU0QzU4OUNFMzQA"


def batch(name: str) -> WebhookBatch:
    return parse_webhook(fixture_bytes(name))


def only_message(name: str) -> WaMessage:
    result = batch(name)
    assert result.problems == ()
    messages = [m for _, m in result.messages()]
    assert len(messages) == 1
    return messages[0]


def only_status(name: str) -> WaStatus:
    statuses = [s for _, s in batch(name).statuses()]
    assert len(statuses) == 1
    return statuses[0]


def test_every_fixture_parses_without_problems() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) >= 30
    for name in names:
        assert batch(name).problems == (), name


def test_text() -> None:
    m = only_message("text")
    assert m.type == "text" and m.protocol_type == "text"
    assert m.text == "Hi, is my order shipped?"
    assert m.from_ == USER and m.user_id is None and m.sender_key == USER
    assert m.contact_name == "Sheena Nelson"
    assert m.timestamp == 1749416384
    assert m.wamid.startswith("wamid.")
    assert m.parts == () and m.context_wamid is None and m.reaction is None
    assert m.raw["text"] == {"body": "Hi, is my order shipped?"}
    contact = m.contact()
    assert (contact.channel, contact.address, contact.name) == (Channel.WHATSAPP, USER, "Sheena Nelson")
    change = batch("text").objects[0]
    assert (change.field, change.phone_number_id, change.display_phone_number) == (
        "messages",
        PNID,
        "15550783881",
    )
    assert change.waba_id == "102290129340398"


def test_reply_context_and_referral() -> None:
    assert only_message("reply_context").context_wamid == OUTBOUND
    m = only_message("referral")
    assert m.text == "I saw your ad"
    assert m.referral is not None and m.referral["ctwa_clid"] == "ARAkLkA8rmlFeiCktEJQ"


def test_interactive_button_reply() -> None:
    m = only_message("interactive_button_reply")
    assert m.text == "Yes, confirm" and m.protocol_type == "interactive"
    assert m.parts == ({"kind": "button_reply", "id": "confirm-yes", "title": "Yes, confirm"},)
    assert m.context_wamid == OUTBOUND


def test_interactive_list_reply() -> None:
    m = only_message("interactive_list_reply")
    assert m.text == "Tue 14:00"
    assert m.parts[0] == {
        "kind": "list_reply",
        "id": "slot-14",
        "title": "Tue 14:00",
        "description": "Downtown office",
    }


def test_flow_response() -> None:
    m = only_message("interactive_nfm_reply")
    part = m.parts[0]
    assert part["kind"] == "flow_response" and part["name"] == "flow" and part["body"] == "Sent"
    assert part["response"] == {"flow_token": "tok-1", "rating": "5", "comment": "Great service"}
    assert m.text.startswith("[flow response: ") and "Great service" in m.text


def test_template_quick_reply_button() -> None:
    m = only_message("button_quick_reply")
    assert m.type == "button" and m.protocol_type == "interactive"
    assert m.text == "Stop promotions"
    assert m.parts == ({"kind": "button", "payload": "STOP_PROMOS", "text": "Stop promotions"},)


def test_image_with_caption() -> None:
    m = only_message("image_caption")
    assert m.text == "[image: The broken part]"
    media = m.media
    assert media is not None
    assert media["kind"] == "image" and media["id"] == "1003383421387256"
    assert media["mime_type"] == "image/jpeg" and media["caption"] == "The broken part"
    assert media["sha256"] == "IdoiVqV2w5sDsfSU7xbS9Eeb6K9rR8j4sYvm7fCd1dM="
    assert media["url"].startswith("https://lookaside.fbsbx.com/")
    assert media["filename"] is None


def test_video_forwarded() -> None:
    m = only_message("video")
    assert m.text == "[video]" and m.forwarded and not m.frequently_forwarded
    assert m.media is not None and m.media["id"] == "765756756"


def test_document() -> None:
    m = only_message("document")
    assert m.text == "[document: contract.pdf — Please sign]"
    assert m.parts[0]["filename"] == "contract.pdf"


def test_sticker() -> None:
    m = only_message("sticker")
    assert m.text == "[sticker]" and m.parts[0]["animated"] is True


def test_voice_note_and_audio_file() -> None:
    voice = only_message("audio_voice")
    assert voice.text == "[voice note]" and voice.is_voice_note
    assert voice.parts[0]["voice"] is True and voice.parts[0]["mime_type"] == "audio/ogg; codecs=opus"
    audio = only_message("audio_file")
    assert audio.text == "[audio]" and not audio.is_voice_note


def test_location() -> None:
    m = only_message("location")
    assert m.text == "[location: 40.1,-3.7 Plaza Mayor, Plaza Mayor, 28012 Madrid]"
    assert m.parts[0]["latitude"] == 40.1 and m.parts[0]["url"] == "https://maps.google.com/?cid=1234"


def test_shared_contacts_do_not_clobber_the_sender() -> None:
    m = only_message("contacts")
    assert m.text == "[contacts: Chandler Bing +1 555-555-5555, Monica +1 666-666-6666]"
    assert m.contact_name == "Sheena Nelson"
    cards = m.parts[0]["contacts"]
    assert len(cards) == 2 and cards[0]["org"]["company"] == "Chanandler Inc."


def test_reaction_and_its_removal() -> None:
    m = only_message("reaction")
    assert m.reaction is not None and m.reaction.wamid == OUTBOUND and m.reaction.emoji == "👍"
    assert not m.reaction.removed and m.text == "[reaction: 👍]"
    gone = only_message("reaction_removed")
    assert gone.reaction is not None and gone.reaction.removed and gone.text == "[reaction removed]"


def test_order() -> None:
    m = only_message("order")
    assert m.text == "[order: 3 x HAMBURGER @ 30 EUR; 2 x SODA @ 2.5 EUR] Deliver after 6pm"
    assert m.parts[0]["catalog_id"] == "354160437058781" and len(m.parts[0]["product_items"]) == 2


def test_system_number_change() -> None:
    m = only_message("system_number_change")
    assert m.system is not None
    assert m.system.type == "user_changed_number" and m.system.new_wa_id == "16505559999"
    assert m.text.startswith("User A changed") and m.contact_name is None


def test_system_user_id_change_without_from_uses_previous_bsuid() -> None:
    m = only_message("system_user_id_change")
    assert m.system is not None and m.system.new_user_id == "US.99887766554433221100"
    assert m.from_ == BSUID


def test_unsupported_keeps_errors() -> None:
    m = only_message("unsupported")
    assert m.text == "[unsupported: poll_creation]" and m.protocol_type == "unsupported"
    assert m.errors[0].code == 131051 and m.errors[0].details == "Message type is currently not supported."


def test_unknown_future_type_is_kept() -> None:
    m = only_message("unknown_type")
    assert m.type == "hologram" and m.text == "[hologram message]" and m.protocol_type == "unsupported"
    assert m.raw["hologram"] == {"shape": "cube", "id": "889"}


def test_edit_and_revoke() -> None:
    m = only_message("edit")
    assert m.edit is not None and m.edit.original_wamid == "wamid.ORIGINALxyz="
    assert m.edit.type == "text" and m.edit.text == "Actually, Tuesday works"
    assert m.text == "[edited] Actually, Tuesday works"
    r = only_message("revoke")
    assert r.revoke is not None and r.revoke.original_wamid == "wamid.ORIGINALxyz="
    assert r.text == "[message deleted]"


def test_bsuid_only_sender() -> None:
    m = only_message("bsuid_only")
    assert m.from_ == BSUID and m.user_id == BSUID and m.sender_key == BSUID
    assert m.contact_name == "Ana" and m.contact_username == "@ana.dev"


def test_bsuid_with_phone_keys_on_bsuid() -> None:
    m = only_message("bsuid_with_phone")
    assert m.from_ == USER and m.user_id == BSUID and m.sender_key == BSUID
    assert m.contact_name == "Sheena Nelson"


def test_statuses() -> None:
    sent = only_status("status_sent")
    assert (sent.wamid, sent.status, sent.recipient_id, sent.timestamp) == (
        OUTBOUND,
        "sent",
        USER,
        1750263773,
    )
    assert sent.pricing is not None and sent.pricing["pricing_model"] == "PMP" and sent.error is None
    assert only_status("status_delivered").status == "delivered"
    assert only_status("status_read").status == "read"
    failed = only_status("status_failed")
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == 131047 and failed.error.title == "Re-engagement message"
    assert failed.error.details.startswith("Message failed to send")
    assert failed.error.href is not None


def test_status_with_biz_opaque_and_conversation() -> None:
    s = only_status("status_biz_opaque")
    assert s.biz_opaque_callback_data == "outbox:msg_01HZX:2"
    assert s.conversation is not None and s.conversation["origin"] == {"type": "service"}


def test_mixed_message_and_status_in_one_change() -> None:
    result = batch("mixed")
    assert len(result.objects) == 1
    change = result.objects[0]
    assert [m.text for m in change.messages] == ["Thanks!"]
    assert [s.status for s in change.statuses] == ["read"]


def test_value_level_errors_and_empty_interactive() -> None:
    change = batch("value_errors").objects[0]
    assert change.errors[0].code == 131000
    assert change.messages[0].text == "[interactive]"


def test_batch_walks_every_entry_and_change() -> None:
    result = batch("batch")
    assert [c.field for c in result.objects] == [
        "messages",
        "messages",
        "message_template_status_update",
        "messages",
    ]
    template = result.objects[2]
    assert (
        template.phone_number_id is None and template.messages == () and template.raw["event"] == "APPROVED"
    )
    texts = [(c.phone_number_id, m.text, m.contact_name) for c, m in result.messages()]
    assert texts == [
        (PNID, "first", "Sheena Nelson"),
        (PNID, "[image]", "Sheena Nelson"),
        ("106540352242999", "from bob", "Bob"),
        ("106540352242999", "from carol", "Carol"),
    ]
    assert [s.status for _, s in result.statuses()] == ["delivered", "read"]


# -- refusing and tolerating ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"x"',
        b'{"object": "page", "entry": []}',
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": {}}',
        b"\xff\xfe\x00",
        b"[" * 100_000,
    ],
)
def test_bad_envelopes_are_bad_payload(body: bytes) -> None:
    with pytest.raises(BadPayload) as info:
        parse_webhook(body)
    assert isinstance(info.value, BadRequest) and info.value.status == 400


def envelope(value: Any, field: str = "messages") -> bytes:
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}],
        }
    ).encode()


def test_bad_items_are_skipped_and_reported() -> None:
    value = {
        "metadata": {"phone_number_id": PNID},
        "messages": [
            {"from": USER, "type": "text", "text": {"body": "no id"}},
            {"id": "wamid.2", "type": "text", "text": {"body": "no sender"}},
            "garbage",
            {"id": "wamid.4", "from": USER, "type": "text", "text": {"body": "fine"}},
        ],
        "statuses": [{"status": "sent"}, {"id": "wamid.x"}, {"id": "wamid.y", "status": "read"}],
    }
    result = parse_webhook(envelope(value))
    assert [m.wamid for _, m in result.messages()] == ["wamid.4"]
    assert [s.wamid for _, s in result.statuses()] == ["wamid.y"]
    assert len(result.problems) == 5
    assert "entry[0].changes[0].messages[0]: no id" in result.problems


def test_wrongly_typed_fields_degrade() -> None:
    value = {
        "metadata": "nope",
        "contacts": "nope",
        "messages": [
            {"id": 12345, "from": 16505551234, "timestamp": "soon", "type": "text", "text": "flat"},
            {"id": "wamid.b", "from": USER, "type": "location", "location": {"latitude": "x"}},
            {"id": "wamid.c", "from": USER, "type": "image", "image": None, "context": []},
            {"id": "wamid.d", "from": USER, "text": {"body": "typeless"}},
            {"id": "wamid.e", "from": USER, "type": "reaction", "reaction": {"emoji": "x"}},
        ],
        "errors": [None, {"code": "131000"}],
    }
    result = parse_webhook(envelope(value))
    messages = [m for _, m in result.messages()]
    assert [m.wamid for m in messages] == ["12345", "wamid.b", "wamid.c", "wamid.d", "wamid.e"]
    assert messages[0].from_ == "16505551234" and messages[0].timestamp is None and messages[0].text == ""
    assert messages[1].text == "[location]"
    assert messages[2].text == "[image]" and messages[2].media is None
    assert messages[3].type == "text" and messages[3].text == "typeless"
    assert messages[4].reaction is None
    assert result.objects[0].phone_number_id is None
    assert result.objects[0].errors[0].code == 131000


def test_non_list_containers_are_problems_not_errors() -> None:
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                1,
                {"changes": "x"},
                {"changes": [1, {"value": 2}, {"field": "messages", "value": {"messages": {}}}]},
            ],
        }
    ).encode()
    result = parse_webhook(body)
    assert len(result.problems) == 5 and len(result.objects) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "from",
                    "type",
                    "text",
                    "body",
                    "image",
                    "interactive",
                    "type",
                    "messages",
                    "statuses",
                    "errors",
                    "status",
                    "contacts",
                    "reaction",
                    "edit",
                    "system",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_value_inside_a_valid_envelope_parses(value: Any) -> None:
    result = parse_webhook(envelope(value))
    assert isinstance(result, WebhookBatch)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=4))
def test_any_messages_list_parses(items: list[Any]) -> None:
    result = parse_webhook(envelope({"messages": items, "statuses": items}))
    for _, m in result.messages():
        assert m.wamid and m.from_ and isinstance(m.text, str)
