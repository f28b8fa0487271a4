"""Text that cannot poison the store: the one rule for every edge.

Two kinds of character break things after they are stored: a lone UTF-16
surrogate (U+D800-U+DFFF, which JSON's `\\ud800` escape can produce) cannot be
encoded as UTF-8, so every later JSON answer, export or feed frame that contains
it fails; and NUL (U+0000) cannot be stored in a PostgreSQL text column at all.

Each edge decides once, with these helpers, what to do about them:

* API requests and agent/chat socket frames come from a party that can fix its
  input: they are refused (`problem`/`find_problem` say where and why).
* Provider payloads (webhooks, relay frames) cannot be fixed by anyone, and a
  refusal makes the provider retry for days: they are made safe (`clean`,
  `clean_json`): a lone surrogate becomes U+FFFD, a NUL is dropped.

Column limits of the store (gateway/store/models.py) that inputs must respect.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_ID = 128  # provider ids, contact addresses, endpoints (String(128))
MAX_NAME = 256  # contact names (String(256))
MAX_DEPTH = 32  # nesting of JSON objects and lists that an API body or frame may carry

_BAD = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def parse_json(raw: str | bytes) -> Any:
    """`json.loads`, refusing NaN, Infinity and numbers too large for a float (ValueError):
    Python reads them, but they cannot be written back as JSON that PostgreSQL accepts."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


def load_provider_json(raw: str | bytes) -> Any:
    """A provider's JSON made safe: NaN, Infinity and overflowing numbers become null,
    lone surrogates U+FFFD, NULs are dropped. (ValueError when it is not JSON at all.)"""
    value = json.loads(raw, parse_constant=_null, parse_float=_finite_or_none)
    return clean_json(value) if may_need_cleaning(raw) else value


def _null(_name: str) -> Any:
    return None


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return None if math.isinf(value) else value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def problem(text: str) -> str | None:
    """What makes `text` unsafe to store, or None."""
    found = _BAD.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character (U+0000)"
    return f"contains a lone surrogate (U+{ord(char):04X})"


def clean(text: str) -> str:
    """`text` made safe: lone surrogates become U+FFFD, NULs are dropped."""
    if _BAD.search(text) is None:
        return text
    return _SURROGATE.sub(REPLACEMENT, text.replace("\x00", ""))


def clean_json(value: Any) -> Any:
    """A decoded JSON value with every string (keys too) made safe. Unchanged values are returned as is."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def may_need_cleaning(raw: str | bytes) -> bool:
    """False when JSON text cannot decode to a NUL or a surrogate (no `\\u` escape): the fast path.

    A raw NUL is a control character JSON refuses inside strings, and a UTF-8 byte
    string cannot carry a surrogate (strict decoding refuses it); only an escape can.
    """
    if isinstance(raw, bytes):
        return b"\\u" in raw
    return "\\u" in raw or _BAD.search(raw) is not None


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_problem(value: Any, where: str, *, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first unsafe place in a decoded JSON value: (`path`, what is wrong), or None.

    Iterative, so a deeply nested body cannot exhaust the interpreter's stack;
    nesting deeper than `max_depth` is itself a problem.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            found = problem(item)
            if found is not None:
                return path, found
        elif isinstance(item, Mapping) or isinstance(item, list):
            if depth >= max_depth:
                return path, f"is nested deeper than {max_depth} levels"
            if isinstance(item, Mapping):
                for key, child in reversed(list(item.items())):
                    if isinstance(key, str) and (found := problem(key)) is not None:
                        return f"{path}.{_shown(key)}" if path else _shown(key), f"has a key that {found}"
                    child_path = f"{path}.{key}" if path else str(key)
                    stack.append((child, child_path, depth + 1))
            else:
                for i, child in reversed(list(enumerate(item))):
                    stack.append((child, f"{path}[{i}]", depth + 1))
    return None


def _shown(key: str) -> str:
    return clean(key)[:64]
