"""Agent text -> Twilio Message bodies: plain SMS text, WhatsApp formatting, images as media."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from channels.twilio.render import (
    BODY_LIMIT,
    MMS_MEDIA_LIMIT,
    Body,
    extract_images,
    render_bodies,
    to_plain_text,
)


def test_plain_text_drops_emphasis_and_keeps_code_and_urls() -> None:
    md = (
        "# Your order\n"
        "It is **shipped** and *on its way* (__fast__, ~~slow~~, ***very***).\n"
        "* one\n"
        "+ two\n"
        "- three\n"
        "Call `get_order_id` or see [the docs](https://ex.com/a_b_c) and https://ex.com/x_y_z.\n"
        "Keep snake_case, 2*3*4 and a \\*literal\\* star.\n"
        "```python\n"
        "x = a_b * c\n"
        "```"
    )
    assert to_plain_text(md) == (
        "Your order\n"
        "It is shipped and on its way (fast, slow, very).\n"
        "- one\n"
        "- two\n"
        "- three\n"
        "Call get_order_id or see the docs (https://ex.com/a_b_c) and https://ex.com/x_y_z.\n"
        "Keep snake_case, 2*3*4 and a *literal* star.\n"
        "x = a_b * c"
    )


def test_plain_text_links_without_a_label_and_one_line_fences() -> None:
    assert to_plain_text("[https://ex.com](https://ex.com) and ```code```") == "https://ex.com and code"
    assert to_plain_text("```ls -la```") == "ls -la"


def test_images_are_extracted_outside_code_only() -> None:
    text = (
        'Here: ![map](https://img.ex.com/map.png "Map")\n\n'
        "![](https://img.ex.com/2.jpg)\n\n"
        "Again ![map](https://img.ex.com/map.png) done.\n"
        "Not a URL: ![x](/local.png)\n"
        "```\n![in code](https://img.ex.com/code.png)\n```"
    )
    rest, urls = extract_images(text)
    assert urls == ["https://img.ex.com/map.png", "https://img.ex.com/2.jpg"]
    assert rest == (
        "Here:\n\nAgain done.\nNot a URL: ![x](/local.png)\n```\n![in code](https://img.ex.com/code.png)\n```"
    )
    assert extract_images("no images") == ("no images", [])


def test_sms_carries_up_to_ten_media_on_the_first_part_then_media_only_messages() -> None:
    images = " ".join(f"![i{n}](https://img.ex.com/{n}.png)" for n in range(12))
    bodies = render_bodies(f"**Photos** {images}", whatsapp=False)
    assert bodies[0] == Body("Photos", tuple(f"https://img.ex.com/{n}.png" for n in range(10)))
    assert bodies[1:] == [Body("", ("https://img.ex.com/10.png", "https://img.ex.com/11.png"))]


def test_whatsapp_carries_one_media_per_message_and_its_own_formatting() -> None:
    bodies = render_bodies(
        "**Hi** ![a](https://img.ex.com/a.png) ![b](https://img.ex.com/b.png)", whatsapp=True
    )
    assert bodies == [Body("*Hi*", ("https://img.ex.com/a.png",)), Body("", ("https://img.ex.com/b.png",))]


def test_only_images_and_blank_text() -> None:
    assert render_bodies("![a](https://img.ex.com/a.png)", whatsapp=False) == [
        Body("", ("https://img.ex.com/a.png",))
    ]
    assert render_bodies("   \n ", whatsapp=False) == []


def test_long_text_is_split_at_sentence_ends_under_the_limit() -> None:
    text = " ".join(f"Sentence number {n} is here." for n in range(200))
    bodies = render_bodies(text, whatsapp=False)
    assert len(bodies) > 1 and all(0 < len(b.text) <= BODY_LIMIT for b in bodies)
    assert all(b.text.endswith(".") for b in bodies)
    assert " ".join(b.text for b in bodies) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"ab *_~`#-[]()!\n.", "![i](https://x.io/p.png)", "😀", "é", "word "]),
        max_size=1500,
    ).map("".join),
    st.booleans(),
)
def test_every_body_fits_and_media_respect_the_limits(text: str, whatsapp: bool) -> None:
    bodies = render_bodies(text, whatsapp=whatsapp)
    for b in bodies:
        assert len(b.text) <= BODY_LIMIT
        assert len(b.media) <= (1 if whatsapp else MMS_MEDIA_LIMIT)
        assert b.text or b.media  # never an empty message
