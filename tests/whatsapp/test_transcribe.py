"""OpenAITranscriber against a real scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from channels.whatsapp.transcribe import OpenAITranscriber, Transcriber, TranscriptionError
from tests.conftest import free_port
from tests.fakes.scripted_http import Recorded, Reply, ScriptedServer

PATH = "/v1/audio/transcriptions"


def reply(status: int, body: object) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Reply(status=status, headers={"content-type": "application/json"}, pieces=[data], chunked=False)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make(server: ScriptedServer, http: httpx.AsyncClient, timeout: float = 5) -> Transcriber:
    return OpenAITranscriber(http, f"{server.base_url}/v1/", "whisper-1", "sk-test", timeout=timeout)


async def test_posts_multipart_and_returns_text(server: ScriptedServer, http: httpx.AsyncClient) -> None:
    def answer(request: Recorded) -> Reply:
        return reply(200, {"text": "  hola, ¿qué tal?  "})

    server.route(PATH, answer)
    audio = b"OggS\x00\x02fake-opus-bytes"
    text = await make(server, http).transcribe(audio, "audio/ogg; codecs=opus", "voice.ogg")
    assert text == "hola, ¿qué tal?"
    request = server.requests[0]
    assert request.method == "POST" and request.path == PATH
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="model"\r\n\r\nwhisper-1' in request.body
    assert b'name="file"; filename="voice.ogg"' in request.body and audio in request.body
    assert b"Content-Type: audio/ogg; codecs=opus" in request.body


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (401, False)]
)
async def test_http_errors(
    server: ScriptedServer, http: httpx.AsyncClient, status: int, retryable: bool
) -> None:
    server.script([reply(status, {"error": {"message": "nope"}})], PATH)
    with pytest.raises(TranscriptionError) as info:
        await make(server, http).transcribe(b"x", "audio/ogg", "a.ogg")
    assert info.value.status == status and info.value.retryable is retryable and "nope" in info.value.message


async def test_missing_text_is_an_error(server: ScriptedServer, http: httpx.AsyncClient) -> None:
    server.script([reply(200, {"words": []}), reply(200, b"not json")], PATH)
    for _ in range(2):
        with pytest.raises(TranscriptionError) as info:
            await make(server, http).transcribe(b"x", "audio/ogg", "a.ogg")
        assert not info.value.retryable


async def test_timeout_and_unreachable_are_retryable(server: ScriptedServer, http: httpx.AsyncClient) -> None:
    server.script([Reply(stall_before=10, pieces=[b"{}"])], PATH)
    with pytest.raises(TranscriptionError) as info:
        await make(server, http, timeout=0.3).transcribe(b"x", "audio/ogg", "a.ogg")
    assert info.value.retryable
    gone = OpenAITranscriber(http, f"http://127.0.0.1:{free_port()}/v1", "m", "k", timeout=3)
    with pytest.raises(TranscriptionError) as info:
        await gone.transcribe(b"x", "audio/ogg", "a.ogg")
    assert info.value.retryable
