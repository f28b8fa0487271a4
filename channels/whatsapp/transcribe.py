"""Voice-note transcription behind a one-method Protocol.

The session logic only needs "audio in, text out"; which service does it is
configuration. `OpenAITranscriber` speaks the OpenAI-compatible
`POST {base_url}/audio/transcriptions` (multipart `model` + `file`), which
OpenAI, Groq, a local whisper server and many proxies all accept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from gateway.directory import AgentDirectory

_PREVIEW = 200


class TranscriptionError(Exception):
    """Transcription failed. `retryable` for timeouts, network errors, 429 and 5xx."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


class Transcriber(Protocol):
    async def transcribe(self, audio: bytes, mime: str, filename: str) -> str: ...


class OpenAITranscriber:
    """`await OpenAITranscriber(http, base_url="https://api.openai.com/v1", model="whisper-1",
    api_key=key).transcribe(ogg, "audio/ogg", "voice.ogg")`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        model: str,
        api_key: str,
        *,
        timeout: float = 60,
        language: str | None = None,
    ) -> None:
        self._http = http
        self._url = f"{base_url.rstrip('/')}/audio/transcriptions"
        self._model = model
        self._api_key = api_key
        self._timeout = timeout
        self._language = language

    async def transcribe(self, audio: bytes, mime: str, filename: str) -> str:
        data = {"model": self._model, "response_format": "json"}
        if self._language:
            data["language"] = self._language
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.post(
                    self._url,
                    data=data,
                    files={"file": (filename, audio, mime)},
                    headers=headers,
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TranscriptionError(
                f"transcription timed out after {self._timeout:g} s", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            raise TranscriptionError(f"transcription service unreachable: {exc}", retryable=True) from exc
        return _text(response)


def _text(response: httpx.Response) -> str:
    status = response.status_code
    if not response.is_success:
        preview = response.content[:_PREVIEW].decode("utf-8", "replace").strip()
        raise TranscriptionError(
            f"transcription failed with HTTP {status}: {preview}",
            status=status,
            retryable=status == 429 or status >= 500,
        )
    try:
        body: Any = json.loads(response.content)
    except (ValueError, RecursionError):
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise TranscriptionError("transcription response has no text", status=status)
    return text.strip()


def transcribers_for(
    directory: AgentDirectory, env: Mapping[str, str], http: httpx.AsyncClient
) -> dict[str, Transcriber]:
    """One transcriber per agent that has a `[agents.<id>.transcriber]` table (any channel)."""
    out: dict[str, Transcriber] = {}
    for agent_id in directory.ids():
        t = directory.get(agent_id).transcriber
        if t is not None:
            key = env.get(t.api_key_env, "") if t.api_key_env else ""
            out[agent_id] = OpenAITranscriber(http, t.base_url, t.model, key, timeout=t.timeout_seconds)
    return out
