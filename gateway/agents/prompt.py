"""What an LLM agent sends: the system prompt and the `messages` list.

System prompt = the template (the session's `turn.prompt`, else the agent's
`prompt`) with `{{variable}}`s filled in, then the notes added at run time with
`session.add_context` (kept in `turn.context["_notes"]`, oldest first), then a
`## UI Context` section with the public (not `_`-prefixed) context entries.

Template variables come from `turn.prompt_vars`, plus the built-ins `date`
(`YYYY-MM-DD`) and `time` (`HH:MM`, 24 h), both UTC, which prompt_vars may
override. An unknown `{{variable}}` is left exactly as written: a typo then
shows up in the transcript instead of silently vanishing. Non-string values are
written as JSON.

History is trimmed from the oldest side to `LlmConfig.history_budget_chars`
(the characters of content and tool-call arguments of earlier messages; the
messages this turn answers are always sent). An assistant tool-call message and
its tool results are kept or dropped together, and tool results whose call is
missing (or calls whose result is missing, e.g. after ephemeral pruning) are
removed, because OpenAI-compatible APIs reject such pairs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway.agents.base import ChatMessage, Turn

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")

Message = dict[str, Any]


def as_text(value: Any) -> str:
    """Strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def render_template(template: str, variables: Mapping[str, Any], *, now: datetime | None = None) -> str:
    """Replace `{{name}}` with `variables[name]`; unknown names stay as written."""
    if "{{" not in template:
        return template
    moment = now or datetime.now(UTC)
    builtins = {"date": moment.strftime("%Y-%m-%d"), "time": moment.strftime("%H:%M")}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return as_text(variables[name])
        if name in builtins:
            return builtins[name]
        return match.group(0)

    return _VARIABLE.sub(substitute, template)


def build_system_prompt(turn: Turn, *, now: datetime | None = None) -> str:
    """The system message's text; empty when there is nothing to say."""
    parts: list[str] = []
    template = turn.prompt or turn.agent.prompt
    if template:
        parts.append(render_template(template, turn.prompt_vars, now=now).strip())
    notes = turn.context.get("_notes")
    if isinstance(notes, (list, tuple)):
        parts.extend(as_text(note).strip() for note in notes if note)
    ui = [f"- {key}: {as_text(value)}" for key, value in turn.context.items() if not key.startswith("_")]
    if ui:
        parts.append("## UI Context\n" + "\n".join(ui))
    return "\n\n".join(p for p in parts if p)


def to_openai(message: ChatMessage) -> Message:
    """One history entry in the chat-completions wire shape."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    out: Message = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def build_messages(turn: Turn, budget_chars: int, *, now: datetime | None = None) -> list[Message]:
    """System prompt + trimmed history + the messages this turn answers."""
    out: list[Message] = []
    system = build_system_prompt(turn, now=now)
    if system:
        out.append({"role": "system", "content": system})
    for group in trim(_groups(turn.history), budget_chars):
        out.extend(to_openai(m) for m in group)
    out.extend(to_openai(m) for m in turn.messages)
    return out


def trim(groups: Sequence[list[ChatMessage]], budget_chars: int) -> list[list[ChatMessage]]:
    """The newest groups whose total size fits the budget (contiguous, oldest dropped)."""
    kept: list[list[ChatMessage]] = []
    used = 0
    for group in reversed(groups):
        size = sum(_size(m) for m in group)
        if used + size > budget_chars:
            break
        used += size
        kept.append(group)
    kept.reverse()
    return kept


def _size(message: ChatMessage) -> int:
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def _groups(history: Iterable[ChatMessage]) -> list[list[ChatMessage]]:
    """Split history into units that must be kept or dropped whole.

    A unit is one plain message, or an assistant tool-call message followed by
    its tool results. Orphan results and unanswered calls are repaired here.
    """
    groups: list[list[ChatMessage]] = []
    items = list(history)
    i = 0
    while i < len(items):
        message = items[i]
        i += 1
        if message.role == "tool":
            continue  # its call is not right before it: an orphan
        if not message.tool_calls:
            groups.append([message])
            continue
        ids = {c.id for c in message.tool_calls}
        results: list[ChatMessage] = []
        answered: set[str | None] = set()
        while i < len(items) and items[i].role == "tool":
            result_id = items[i].tool_call_id
            if result_id in ids and result_id not in answered:  # one result per call
                answered.add(result_id)
                results.append(items[i])
            i += 1
        calls = tuple(c for c in message.tool_calls if c.id in answered)
        if calls != message.tool_calls:
            message = replace(message, tool_calls=calls)
        if calls:
            groups.append([message, *results])
        elif message.content:
            groups.append([message])
    return groups
