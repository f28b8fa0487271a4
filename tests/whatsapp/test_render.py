"""Markdown -> WhatsApp formatting, and splitting long replies."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from channels.whatsapp.render import split_message, to_whatsapp_markdown, utf16_len


@pytest.mark.parametrize(
    ("markdown", "whatsapp"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("***both***", "*_both_*"),
        ("**bold with _italic_ inside**", "*bold with _italic_ inside*"),
        ("# Title", "*Title*"),
        ("### **Already bold** ###", "*Already bold*"),
        ("[docs](https://example.com/a_b_c)", "docs (https://example.com/a_b_c)"),
        ("[https://example.com](https://example.com)", "https://example.com"),
        ("![chart](https://x.io/c.png)", "chart (https://x.io/c.png)"),
        ("see https://x.io/snake_case_path*x* ok", "see https://x.io/snake_case_path*x* ok"),
        ("- one\n- two", "• one\n• two"),
        ("* one\n* **two**", "• one\n• *two*"),
        ("+ one\n  - nested *it*", "• one\n  • nested _it_"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("`a*b*c` and `__init__`", "`a*b*c` and `__init__`"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("a*b*c stays", "a*b*c stays"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("*args and **kwargs", "*args and **kwargs"),
        ("\\*not italic\\*", "*not italic*"),
        ("---", "---"),
        ("***", "***"),
        ("> quote with **b**", "> quote with *b*"),
        ("```python\nx = a**b  # *no*\n```", "```\nx = a**b  # *no*\n```"),
        (
            "```\n# not a heading\n- not a bullet\n```\n# Heading",
            "```\n# not a heading\n- not a bullet\n```\n*Heading*",
        ),
        ("```inline one-liner```", "```inline one-liner```"),
        ("line1\r\nline2", "line1\nline2"),
        ("plain text, nothing to do.", "plain text, nothing to do."),
        ("private \ue000\ue003 use chars", "private \ue000\ue003 use chars"),
        ("", ""),
    ],
)
def test_to_whatsapp_markdown(markdown: str, whatsapp: str) -> None:
    assert to_whatsapp_markdown(markdown) == whatsapp


def test_unclosed_fence_keeps_the_rest_verbatim() -> None:
    assert to_whatsapp_markdown("```\n**x**") == "```\n**x**"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab *_~`#-[]()\n\\!>:/.h")), max_size=80))
def test_markdown_conversion_is_total_and_leaves_no_sentinels(text: str) -> None:
    out = to_whatsapp_markdown(text)
    assert not any("\ue000" <= c <= "\ue004" for c in out)


# -- split ----------------------------------------------------------------------------------


def test_short_text_is_one_part() -> None:
    assert split_message("  hello  ") == ["hello"]
    assert split_message("") == [] and split_message(" \n\t ") == []


def test_prefers_paragraphs_then_sentences_then_words() -> None:
    para = "First paragraph here." + "\n\n" + "Second paragraph is here."
    assert split_message(para, limit=30) == ["First paragraph here.", "Second paragraph is here."]
    sentences = "One two three. Four five six. Seven eight nine."
    assert split_message(sentences, limit=32) == ["One two three. Four five six.", "Seven eight nine."]
    words = "alpha beta gamma delta epsilon"
    assert split_message(words, limit=12) == ["alpha beta", "gamma delta", "epsilon"]
    assert split_message("x" * 10, limit=4) == ["xxxx", "xxxx", "xx"]


def test_cjk_sentences_split_without_spaces() -> None:
    assert split_message("今日は晴れです。明日は雨です。", limit=10) == ["今日は晴れです。", "明日は雨です。"]


def test_an_early_paragraph_break_does_not_make_a_tiny_part() -> None:
    text = "Hi.\n\n" + "word " * 30
    parts = split_message(text, limit=60)
    assert len(parts[0]) > 30


def test_emoji_count_as_two_utf16_units() -> None:
    parts = split_message("😀" * 5, limit=4)
    assert parts == ["😀😀", "😀😀", "😀"]


def test_does_not_tear_combining_marks_or_zwj_sequences_when_avoidable() -> None:
    family = "👨\u200d👩\u200d👧"
    parts = split_message("ab" + family * 3, limit=10)
    assert all(not p.startswith("\u200d") and not p.endswith("\u200d") for p in parts)
    accented = "e\u0301" * 6
    assert all(not p.startswith("\u0301") for p in split_message(accented, limit=5))


def test_default_limit_is_4096() -> None:
    text = ("A sentence of moderate length. " * 400).strip()
    parts = split_message(text)
    assert len(parts) == 4 and all(utf16_len(p) <= 4096 for p in parts)
    assert all(p.endswith(".") for p in parts)


def test_limit_must_fit_any_character() -> None:
    with pytest.raises(ValueError):
        split_message("abc", limit=1)


def assert_well_split(text: str, parts: list[str], limit: int) -> None:
    pos = 0
    for part in parts:
        assert part and part == part.strip()
        assert len(part) <= limit and utf16_len(part) <= limit
        at = text.find(part, pos)
        assert at >= 0, (part, text)
        assert text[pos:at].strip() == ""  # only whitespace was dropped
        pos = at + len(part)
    assert text[pos:].strip() == ""


alphabet = st.sampled_from(list("ab c.!?\n\n\t—é😀\u0301\u200d。")) | st.characters()


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=alphabet, max_size=300), st.integers(min_value=2, max_value=60))
@example("a. " * 50, 7)
@example("😀" * 9, 3)
@example("\n\n\n\nx", 2)
def test_split_properties(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert_well_split(text, parts, limit)
    assert bool(parts) == bool(text.strip())
    if utf16_len(text.strip()) <= limit:
        assert parts == ([text.strip()] if text.strip() else [])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=60),
    st.integers(min_value=20, max_value=200),
)
def test_split_joined_paragraphs(paragraphs: list[str], limit: int) -> None:
    text = "\n\n".join(paragraphs)
    assert_well_split(text, split_message(text, limit), limit)
