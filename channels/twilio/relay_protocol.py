"""ConversationRelay's WebSocket messages (facts §6.3-6.4), parsed once at the edge.

Twilio → gateway: `setup`, `prompt`, `dtmf`, `interrupt`, `error`; newer types
(`info`, …) parse as `Unknown` and are ignored. Anything else malformed raises
`FrameError`: the connection records it and goes on (a bad frame never ends a call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway import sanitizer

MAX_FRAME_BYTES = 65_536


class FrameError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Setup:
    session_id: str
    call_sid: str
    account_sid: str
    from_: str
    to: str
    direction: str
    caller_name: str | None
    forwarded_from: str | None
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    lang: str | None
    last: bool


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    spoken: str
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class RelayError:
    description: str


@dataclass(frozen=True, slots=True)
class ConfigUpdated:
    """Twilio applied a mid-call configuration change (its `configUpdated` event)."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str


Frame = Setup | Prompt | Dtmf | Interrupt | RelayError | ConfigUpdated | Unknown


def parse_frame(raw: str | bytes) -> Frame:
    if len(raw) > MAX_FRAME_BYTES:
        raise FrameError(f"frame larger than {MAX_FRAME_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FrameError("not JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("not a JSON object")
    if sanitizer.may_need_cleaning(raw):
        obj = sanitizer.clean_json(obj)  # Twilio's words: made safe, never refused (sanitizer.py)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("no `type`")
    if kind == "setup":
        params = obj.get("customParameters") or {}
        if not isinstance(params, dict):
            raise FrameError("setup: `customParameters` must be an object")
        ids = sanitizer.MAX_ID  # they become ids and addresses in the store
        return Setup(
            session_id=_s(obj, "sessionId", max_len=ids),
            call_sid=_s(obj, "callSid", required=True, max_len=64),
            account_sid=_s(obj, "accountSid", max_len=ids),
            from_=_s(obj, "from", max_len=ids),
            to=_s(obj, "to", max_len=ids),
            direction=_s(obj, "direction") or "inbound",
            caller_name=_s(obj, "callerName") or None,
            forwarded_from=_s(obj, "forwardedFrom") or None,
            parameters={str(k): str(v) for k, v in params.items() if isinstance(v, str | int | float)},
        )
    if kind == "prompt":
        text = obj.get("voicePrompt")
        if not isinstance(text, str):
            raise FrameError("prompt: `voicePrompt` must be a string")
        lang = obj.get("lang")
        return Prompt(
            text=text, lang=lang if isinstance(lang, str) else None, last=obj.get("last", True) is True
        )
    if kind == "dtmf":
        digit = obj.get("digit")
        if not isinstance(digit, str) or not digit or len(digit) > 8:
            raise FrameError("dtmf: `digit` must be a short string")
        return Dtmf(digit=digit)
    if kind == "interrupt":
        spoken = obj.get("utteranceUntilInterrupt", "")
        if not isinstance(spoken, str):
            raise FrameError("interrupt: `utteranceUntilInterrupt` must be a string")
        return Interrupt(spoken=spoken, duration_ms=_int(obj.get("durationUntilInterruptMs")))
    if kind == "error":
        return RelayError(description=str(obj.get("description", ""))[:1000])
    if kind == "configUpdated":
        return ConfigUpdated(fields={k: v for k, v in obj.items() if k != "type"})
    return Unknown(type=kind[:64])


def _s(obj: dict[str, Any], key: str, *, required: bool = False, max_len: int = 256) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > max_len:
        raise FrameError(f"`{key}` must be a string")
    return value


def _int(value: Any) -> int | None:
    # The doc says a number; some samples send a string.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# Gateway → Twilio
def text(token: str, last: bool) -> dict[str, Any]:
    return {"type": "text", "token": token, "last": last}


def end(handoff: dict[str, Any] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "end"}
    if handoff is not None:
        frame["handoffData"] = json.dumps(handoff)  # a string, returned in the action callback
    return frame


def send_digits(digits: str) -> dict[str, Any]:
    return {"type": "sendDigits", "digits": digits}


def language(lang: str) -> dict[str, Any]:
    return {"type": "language", "ttsLanguage": lang, "transcriptionLanguage": lang}


# Mid-call configuration (Twilio changelog 2026-10-28: `config`, `hints` and `language`
# messages). Field names follow the <ConversationRelay> attributes they change.
SESSION_SETTINGS = ("interruptible", "preemptible", "dtmfDetection")
LANGUAGE_SETTINGS = ("voice", "ttsProvider", "transcriptionProvider", "speechModel")


def configure(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames that apply checked settings: session settings, then hints, then the
    language (switched to `language`, with its voice and providers when given)."""
    frames: list[dict[str, Any]] = []
    session = {k: settings[k] for k in SESSION_SETTINGS if k in settings}
    if session:
        frames.append({"type": "config", **session})
    if "hints" in settings:
        frames.append({"type": "hints", "hints": ",".join(settings["hints"])})
    lang = {k: settings[k] for k in LANGUAGE_SETTINGS if k in settings}
    if "language" in settings:
        frames.append({**language(settings["language"]), **lang})
    elif lang:
        frames.append({"type": "language", **lang})
    return frames
