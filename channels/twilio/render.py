"""Agent text -> Twilio Message bodies (SMS/MMS plain text, WhatsApp formatting) and media.

LLMs answer in Markdown. An SMS shows every `*` and `#` literally, so for SMS the
emphasis is removed and links become `label (url)`; WhatsApp-via-Twilio gets the
same translation as the Cloud API channel (`to_whatsapp_markdown`). Markdown
images `![alt](https://…)` are taken out of the text and sent as `MediaUrl`s, since
that is how a picture reaches a phone. Bodies are cut under Twilio's 1600-character
limit at paragraph, sentence or word boundaries (`split_message`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from channels.whatsapp.render import split_message, to_whatsapp_markdown

BODY_LIMIT = 1600  # Twilio refuses longer bodies (error 21617)
MMS_MEDIA_LIMIT = 10  # MediaUrls per message (Twilio: up to 10, 5 MB in total)
WHATSAPP_MEDIA_LIMIT = 1  # WhatsApp carries one attachment per message

_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(\s*<?(https?://[^)\s>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_BLANK_RUN = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")

# Plain text: private-use characters stand in for protected spans while the rules run.
_OPEN, _CLOSE = "\ue003", "\ue004"
_SENTINELS = re.compile("[\ue003\ue004]")
_PROTECTED = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_BULLET = re.compile(r"^(\s*)[*+]\s+(?=\S)")  # `-` bullets are kept as they are
_CODE_SPAN = re.compile(r"(`+)([^`\n]+?)\1(?!`)")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!~|>])")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()]*[^\s<>().,;:!?'\"*_~]")
_EMPHASIS = (
    re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*"),
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"),
    re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"),
    re.compile(r"(?<![\w*\\])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"),
    re.compile(r"(?<![\w\\])_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"),
)


@dataclass(frozen=True, slots=True)
class Body:
    """One Twilio Message: text (maybe empty when it only carries media) and media URLs."""

    text: str
    media: tuple[str, ...] = ()


def render_bodies(text: str, *, whatsapp: bool) -> list[Body]:
    """The messages that carry `text`: formatted, images as media, each body <= 1600 characters.

    Media go with the first message (up to the channel's per-message limit); any
    more follow as media-only messages, so no image is dropped.
    """
    stripped, images = extract_images(text)
    formatted = to_whatsapp_markdown(stripped) if whatsapp else to_plain_text(stripped)
    parts = split_message(formatted, BODY_LIMIT)
    per_message = WHATSAPP_MEDIA_LIMIT if whatsapp else MMS_MEDIA_LIMIT
    groups = [tuple(images[i : i + per_message]) for i in range(0, len(images), per_message)]
    if not parts:
        return [Body("", g) for g in groups]
    out = [Body(part, groups[0] if i == 0 and groups else ()) for i, part in enumerate(parts)]
    return out + [Body("", g) for g in groups[1:]]


def extract_images(text: str) -> tuple[str, list[str]]:
    """Take `![alt](http(s)://…)` out of `text` (outside code blocks): (text left, image URLs).

    Only absolute http(s) URLs qualify: Twilio must fetch them. Duplicates are sent once.
    """
    urls: list[str] = []
    out: list[str] = []
    fence: str | None = None

    def take(m: re.Match[str]) -> str:
        if m.group(2) not in urls:
            urls.append(m.group(2))
        return ""

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1) == fence:
                fence = None
            out.append(line)
        elif opened and not line.strip()[3:].rstrip().endswith(opened.group(1)):
            fence = opened.group(1)
            out.append(line)
        else:
            new = _IMAGE.sub(take, line)
            if new != line:
                new = re.sub(r"[ \t]{2,}", " ", new).strip()
            out.append(new)
    if not urls:
        return text, []
    return _BLANK_RUN.sub("\n\n", "\n".join(out)).strip(), urls


def to_plain_text(text: str) -> str:
    """Markdown -> what an SMS shows well: no emphasis markers, `label (url)` links.

    `**b**`, `*i*`, `_i_`, `~~s~~` lose their markers; `# Title` -> `Title`;
    `* x`/`+ x` -> `- x` (ASCII keeps the message in the cheaper GSM-7 encoding);
    code fences are dropped, code spans lose their backticks; text inside code and
    URLs is never touched, so `snake_case` and `a*b` survive.
    """
    out: list[str] = []
    fence: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1) == fence and not line.strip()[3:].strip():
                fence = None
            else:
                out.append(line)
        elif opened:
            fence = opened.group(1)
            rest = line.strip()[3:]
            if rest.endswith(fence) and len(rest) > 3:  # ```one-liner```
                fence = None
                out.append(rest[:-3].strip())
        else:
            out.append(_plain_line(line))
    return "\n".join(out)


def _plain_line(line: str) -> str:
    heading = _HEADING.match(line)
    if heading:
        return _plain_inline(heading.group(1)).strip()
    bullet = _BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}- {_plain_inline(line[bullet.end() :])}"
    return _plain_inline(line)


def _plain_inline(text: str) -> str:
    saved: list[str] = []

    def keep(value: str) -> str:
        saved.append(value)
        return f"{_OPEN}{len(saved) - 1}{_CLOSE}"

    text = _SENTINELS.sub(lambda m: keep(m.group(0)), text)
    text = _CODE_SPAN.sub(lambda m: keep(m.group(2)), text)
    text = _ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = _LINK.sub(lambda m: _link(m.group(1), m.group(2), keep), text)
    text = _URL.sub(lambda m: keep(m.group(0)), text)
    for rule in _EMPHASIS:
        text = rule.sub(lambda m: m.group(1), text)
    while _PROTECTED.search(text):  # a saved span may itself contain saved spans
        text = _PROTECTED.sub(lambda m: saved[int(m.group(1))], text)
    return text


def _link(label: str, url: str, keep: Callable[[str], str]) -> str:
    label = label.strip()
    if not label or label == url or label == url.split("://", 1)[-1]:
        return keep(url)
    return f"{label} ({keep(url)})"
