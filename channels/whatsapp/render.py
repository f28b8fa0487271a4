"""Agent text -> what WhatsApp displays well.

LLMs answer in Markdown; WhatsApp has its own, smaller syntax: `*bold*`,
`_italic_`, `~strike~`, `` `code` ``, ```` ``` ```` blocks, `> quote`, and no
headings, links or tables. `to_whatsapp_markdown` translates what has an
equivalent and leaves the rest readable. `split_message` cuts a long reply into
bodies under the 4096-character limit of a text message.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# Private-use characters stand in for output markers and protected spans while
# the inline rules run, so one rule's output is never re-read by the next.
_BOLD, _ITALIC, _STRIKE, _OPEN, _CLOSE = "\ue000", "\ue001", "\ue002", "\ue003", "\ue004"
_SENTINELS = re.compile("[\ue000-\ue004]")
_PROTECTED = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_CODE_SPAN = re.compile(r"`[^`\n]+`")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!~|>])")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()]*[^\s<>().,;:!?'\"*_~]")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD_RULES = (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"))
_STRIKE_RULE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_STAR_ITALIC = re.compile(r"(?<![\w*\\])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")


def to_whatsapp_markdown(text: str) -> str:
    """Markdown -> WhatsApp formatting.

    `**b**`/`__b__` -> `*b*`; `*i*`/`_i_` -> `_i_`; `~~s~~` -> `~s~`; `# Title` ->
    `*Title*`; `[t](u)` -> `t (u)`; `- x`/`* x`/`+ x` -> `• x`. Code spans, fenced
    blocks (the language tag is dropped: WhatsApp would print it) and URLs are
    left untouched, so `snake_case` and `a*b` in code or links survive.
    """
    out: list[str] = []
    fence: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1) == fence and not line.strip()[3:].strip():
                fence = None
                out.append("```")
            else:
                out.append(line)
        elif opened:
            fence = opened.group(1)
            rest = line.strip()[3:]
            if rest.endswith(fence) and len(rest) > 3:  # ```one-liner```
                fence = None
                out.append(f"```{rest[:-3]}```")
            else:
                out.append("```")
        else:
            out.append(_line(line))
    return "\n".join(out)


def _line(line: str) -> str:
    if _RULE.match(line):
        return line
    heading = _HEADING.match(line)
    if heading:
        inner = _inline(re.sub(r"\*\*|__", "", heading.group(1))).strip()
        return f"*{inner}*" if inner else ""
    bullet = _BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}• {_inline(line[bullet.end() :])}"
    return _inline(line)


def _inline(text: str) -> str:
    saved: list[str] = []

    def keep(value: str) -> str:
        saved.append(value)
        return f"{_OPEN}{len(saved) - 1}{_CLOSE}"

    text = _SENTINELS.sub(lambda m: keep(m.group(0)), text)
    text = _CODE_SPAN.sub(lambda m: keep(m.group(0)), text)
    text = _ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = _LINK.sub(lambda m: _link(m.group(1), m.group(2), keep), text)
    text = _URL.sub(lambda m: keep(m.group(0)), text)
    text = _BOLD_ITALIC.sub(lambda m: f"{_BOLD}{_ITALIC}{m.group(1)}{_ITALIC}{_BOLD}", text)
    for rule in _BOLD_RULES:
        text = rule.sub(lambda m: f"{_BOLD}{m.group(1)}{_BOLD}", text)
    text = _STRIKE_RULE.sub(lambda m: f"{_STRIKE}{m.group(1)}{_STRIKE}", text)
    text = _STAR_ITALIC.sub(lambda m: f"{_ITALIC}{m.group(1)}{_ITALIC}", text)
    text = text.replace(_BOLD, "*").replace(_ITALIC, "_").replace(_STRIKE, "~")
    while _PROTECTED.search(text):  # a saved span may itself contain saved spans
        text = _PROTECTED.sub(lambda m: saved[int(m.group(1))], text)
    return text


def _link(label: str, url: str, keep: Callable[[str], str]) -> str:
    label = label.strip()
    if not label or label == url or label == url.split("://", 1)[-1]:
        return keep(url)
    return f"{label} ({keep(url)})"


# -- splitting ------------------------------------------------------------------------------

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_NEWLINE = re.compile(r"\n")
# "end. Next" needs the space; CJK full stops (U+3002, U+FF01, U+FF1F) end a sentence without one.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+[\u300d\u300f\uff09]*")
_SPACE = re.compile(r"\s")
_GLUE = {"\u200d", "\ufe0e", "\ufe0f"}  # ZWJ, variation selectors: never start a part with them


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (characters outside the BMP count twice)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def split_message(text: str, limit: int = 4096) -> list[str]:
    """Cut `text` into parts that each fit one WhatsApp text message.

    Limit: every part is at most `limit` UTF-16 code units, which also bounds
    its Python `len` (code points). Meta documents 4096 "characters" without
    saying which; counting UTF-16 is the stricter reading (an emoji counts 2),
    so a part can never be rejected for length under either.

    Preference for a cut, within the largest prefix that fits: a blank line,
    then a line break, then a sentence end, then any whitespace, else a hard
    cut (stepping back over combining marks / ZWJ so a character cluster is not
    torn when possible). The first three are only used if they keep at least
    half of the window, so one early blank line does not produce a tiny part.

    Content: whitespace around each cut, and at the very start and end, is
    dropped; nothing else. Every part is a substring of `text`, in order, and
    the gaps between consecutive parts are whitespace only. A blank text gives
    `[]` (never an empty part). `limit` must be at least 2 so any character fits.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 (one UTF-16 surrogate pair)")
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if utf16_len(rest) <= limit:
            parts.append(rest)
            break
        cut = _cut(rest, _window(rest, limit))
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return parts


def _window(text: str, limit: int) -> int:
    """How many leading characters of `text` fit in `limit` UTF-16 units."""
    used = 0
    for i, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            return i
    return len(text)


def _cut(text: str, n: int) -> int:
    """Where to cut `text` (which is longer than its `n`-character window); 0 < result <= n."""
    probe = text[: n + 1]  # a boundary right after the window still keeps the part <= n
    for rule in (_PARAGRAPH, _NEWLINE):
        starts = [m.start() for m in rule.finditer(probe) if 0 < m.start() <= n]
        if starts and starts[-1] >= n // 2:
            return starts[-1]
    ends = [m.end() for m in _SENTENCE_END.finditer(probe) if 0 < m.end() <= n]
    if ends and ends[-1] >= n // 2:
        return ends[-1]
    spaces = [m.start() for m in _SPACE.finditer(probe) if 0 < m.start() <= n]
    if spaces and text[: spaces[-1]].strip():
        return spaces[-1]
    cut = n
    while cut > 1 and _tears(text, cut):
        cut -= 1
    return n if _tears(text, cut) else cut


def _tears(text: str, i: int) -> bool:
    """Whether cutting before `text[i]` splits a character cluster (mark, ZWJ, skin tone)."""
    char = text[i]
    glue = char in _GLUE or unicodedata.combining(char) != 0 or 0x1F3FB <= ord(char) <= 0x1F3FF
    return glue or text[i - 1] == "\u200d"


def bound_parts(parts: list[str], most: int, limit: int = 4096) -> list[str]:
    """At most `most` parts: the first `most - 1` as they are, the rest joined into the last,
    which is cut (with "…") when it cannot fit in one message of `limit` UTF-16 units."""
    if len(parts) <= most:
        return parts
    head, tail = parts[: most - 1], "\n\n".join(parts[most - 1 :])
    if utf16_len(tail) > limit:
        tail = split_message(tail, limit - 1)[0] + "…"
    return [*head, tail]
