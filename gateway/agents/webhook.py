"""The `webhook` agent: the gateway POSTs each turn to your URL and streams back the answer.

Request: JSON `{sessionId, agent, channel, contact, message, history, context,
metadata}` (plus `notes` when `session.add_context` added any), signed with
`X-Gateway-Timestamp` and `X-Gateway-Signature: sha256=<hex>` when the agent has
a `secret_env`. The signature is HMAC-SHA256 over `f"{timestamp}."` + the raw
body, so a captured request cannot be replayed later with a new timestamp;
`verify` is the receiving side's recipe.

Response, chosen by its content type:
  text/event-stream                      `data: {"choices":[{"delta":{"content":…}}]}` (OpenAI
                                         chunks) or `data: {"token":…}`; `[DONE]` optional
  application/x-ndjson, application/jsonl  one `{"token":…}` or `{"text":…}` per line
  text/plain (or no content type)        the body itself, streamed as it arrives
  application/json                       one `{"text":…}`
A frame or body `{"error": …}` fails the turn with that message. An empty body
(e.g. 204) means the agent chose not to answer.

`timeout_seconds` bounds connecting and each silence (before the headers and
between two pieces of the body), so long streamed answers are fine.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import httpx

from gateway.agents.base import AgentOutput, TextDelta, Turn
from gateway.agents.openai_stream import SseDecoder, StreamFormatError, parse_json_object
from gateway.errors import AgentError
from gateway.sanitizer import load_provider_json
from gateway.settings import WebhookConfig

SIGNATURE_HEADER = "X-Gateway-Signature"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
_PREVIEW = 200
_TEXT_TYPES = ("", "text/plain")
_NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson", "application/json-lines")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Gateway-Signature` value for this timestamp and raw body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """True when `signature` is ours for this body and the timestamp is recent.

    Compares in constant time; a timestamp more than `tolerance_seconds` away
    from `now` (default: the current time) is refused, so old requests cannot be
    replayed.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


def request_body(turn: Turn, config: WebhookConfig) -> dict[str, Any]:
    """The JSON the webhook receives for this turn."""
    contact: dict[str, Any] | None = None
    if turn.contact is not None:
        contact = {"id": turn.contact.address}
        if turn.contact.name:
            contact["name"] = turn.contact.name
    message: dict[str, Any] = {"text": turn.text}
    message_id = next((m.message_id for m in reversed(turn.messages) if m.message_id), None)
    if message_id:
        message = {"messageId": message_id, "text": turn.text}
    history: list[dict[str, Any]] = []
    if config.history_messages:
        for m in turn.history:
            if m.role not in ("user", "assistant") or not m.content:
                continue
            entry: dict[str, Any] = {"role": m.role, "text": m.content}
            if m.role == "assistant":
                entry["source"] = m.source
            history.append(entry)
        history = history[-config.history_messages :]
    body: dict[str, Any] = {
        "sessionId": turn.session_id,
        "agent": turn.agent_id,
        "channel": str(turn.channel),
        "contact": contact,
        "message": message,
        "history": history,
        "context": {k: v for k, v in turn.context.items() if not k.startswith("_")},
        "metadata": dict(turn.metadata),
    }
    notes = turn.context.get("_notes")
    if notes:
        body["notes"] = list(notes)
    return body


class WebhookAgent:
    def __init__(self, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self._client = client
        self._env = env

    async def run(self, turn: Turn) -> AsyncIterator[AgentOutput]:
        config = turn.agent.webhook
        if config is None:
            raise AgentError(f"agent {turn.agent_id} has no [webhook] configuration")
        raw = json.dumps(request_body(turn, config), ensure_ascii=False, default=str).encode()
        headers = {"Content-Type": "application/json"}
        if config.secret_env:
            secret = self._env.get(config.secret_env)
            if not secret:
                raise AgentError(f"the webhook secret variable {config.secret_env} (secret_env) is not set")
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, raw)
        where = config.url
        try:
            async with self._client.stream(
                "POST",
                config.url,
                content=raw,
                headers=headers,
                timeout=httpx.Timeout(config.timeout_seconds),
            ) as response:
                if not response.is_success:
                    detail = (await response.aread()).decode("utf-8", "replace").strip()[:_PREVIEW]
                    raise AgentError(
                        f"webhook {where} answered HTTP {response.status_code}"
                        + (f": {detail}" if detail else "")
                    )
                async with aclosing(_read(response)) as texts:
                    async for text in texts:
                        yield TextDelta(text=text)
        except httpx.TimeoutException:
            raise AgentError(
                f"webhook {where} timed out (nothing received for {config.timeout_seconds:g} s)"
            ) from None
        except httpx.ConnectError as exc:
            raise AgentError(f"webhook {where} is unreachable: {exc}") from None
        except httpx.HTTPError as exc:
            raise AgentError(f"webhook {where} failed: {type(exc).__name__}: {exc}") from None


async def _read(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The answer's text pieces, by content type."""
    ctype = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "text/event-stream":
        reader: Callable[[httpx.Response], AsyncGenerator[str, None]] = _sse
    elif ctype in _NDJSON_TYPES:
        reader = _ndjson
    elif ctype == "application/json":
        reader = _json
    elif ctype in _TEXT_TYPES:
        reader = _text
    else:
        raise AgentError(
            f"webhook answered with unsupported content type {ctype!r}; expected text/event-stream, "
            "application/x-ndjson, text/plain or application/json"
        )
    async with aclosing(reader(response)) as texts:
        async for text in texts:
            if text:
                yield text


def _frame_text(frame: Mapping[str, Any]) -> str:
    """Text of one JSON frame: `{"token"}`, `{"text"}` or an OpenAI chunk."""
    if "error" in frame:
        error = frame["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            error = error["message"]
        raise AgentError(f"webhook reported an error: {str(error)[:_PREVIEW]}")
    for key in ("token", "text"):
        value = frame.get(key)
        if isinstance(value, str):
            return value
    choices = frame.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or choices[0].get("message")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
    return ""


async def _sse(response: httpx.Response) -> AsyncGenerator[str, None]:
    decoder = SseDecoder()
    async for piece in response.aiter_bytes():
        for event in decoder.feed(piece):
            if event.data == "[DONE]":
                return
            yield _sse_text(event.data)
    for event in decoder.close():
        if event.data == "[DONE]":
            return
        yield _sse_text(event.data)


def _sse_text(data: str) -> str:
    """A JSON frame's text; data that is not JSON at all is taken as plain text."""
    try:
        value = load_provider_json(data)  # the agent's text is made safe, never refused
    except (ValueError, RecursionError):
        if data.lstrip().startswith(("{", "[")):
            raise StreamFormatError(f"malformed webhook event (not JSON): {data[:_PREVIEW]!r}") from None
        return data
    return _frame_text(value) if isinstance(value, dict) else data


async def _ndjson(response: httpx.Response) -> AsyncGenerator[str, None]:
    buffer = b""
    async for piece in response.aiter_bytes():
        buffer += piece
        if b"\n" not in piece:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield _frame_text(parse_json_object(line, what="webhook NDJSON line"))
    if buffer.strip():
        yield _frame_text(parse_json_object(buffer, what="webhook NDJSON line"))


async def _text(response: httpx.Response) -> AsyncGenerator[str, None]:
    try:
        factory = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")
    except LookupError:
        factory = codecs.getincrementaldecoder("utf-8")
    decoder = factory("replace")
    async for piece in response.aiter_bytes():
        yield decoder.decode(piece)
    yield decoder.decode(b"", final=True)


async def _json(response: httpx.Response) -> AsyncGenerator[str, None]:
    raw = await response.aread()
    if raw.strip():
        yield _frame_text(parse_json_object(raw, what="webhook JSON response"))
