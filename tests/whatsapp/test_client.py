"""GraphClient against a real fake Graph server on 127.0.0.1, and the error mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from channels.whatsapp.client import (
    GraphClient,
    graph_error,
    is_bsuid,
    read_payload,
    recipient,
    template_payload,
    text_payload,
)
from channels.whatsapp.errors import (
    GraphError,
    MediaTooLarge,
    PermanentGraphError,
    RateLimited,
    TokenExpired,
    TransientGraphError,
    Undeliverable,
    WindowClosed,
)
from tests.conftest import free_port
from tests.fakes.graph_server import FakeGraph

PNID = "106540352242922"
TOKEN = "EAAtest-token"
INBOUND = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMDhCQQA1="


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def client_for(
    graph: FakeGraph, http: httpx.AsyncClient, *, token: str = TOKEN, timeout: float = 5
) -> GraphClient:
    return GraphClient(
        http,
        base_url=graph.base_url,
        version=graph.version,
        token=token,
        timeout=timeout,
        download_timeout=timeout,
    )


# -- payload builders -----------------------------------------------------------------------


def test_text_payload() -> None:
    assert text_payload("16505551234", "Hi") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+16505551234",
        "type": "text",
        "text": {"body": "Hi", "preview_url": False},
    }
    full = text_payload("+16505551234", "Hi", reply_to=INBOUND, preview_url=True, biz_opaque="outbox:1")
    assert full["to"] == "+16505551234" and full["context"] == {"message_id": INBOUND}
    assert full["text"]["preview_url"] is True and full["biz_opaque_callback_data"] == "outbox:1"


def test_bsuid_recipients_use_recipient() -> None:
    assert is_bsuid("US.13491208655302741918") and is_bsuid("US.ENT.11815799212886844830")
    assert not is_bsuid("16505551234") and not is_bsuid("+16505551234")
    payload = text_payload("US.13491208655302741918", "Hi")
    assert payload["recipient"] == "US.13491208655302741918" and "to" not in payload
    assert recipient(" 447700900123 ") == {"to": "+447700900123"}


def test_template_payload() -> None:
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    payload = template_payload("16505551234", "order_update", "en_US", components, biz_opaque="o:2")
    assert payload["type"] == "template"
    assert payload["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": components,
    }
    assert payload["biz_opaque_callback_data"] == "o:2"
    assert "components" not in template_payload("US.1", "hello_world", "en_US")["template"]


def test_read_payload() -> None:
    assert read_payload(INBOUND) == {"messaging_product": "whatsapp", "status": "read", "message_id": INBOUND}
    assert read_payload(INBOUND, typing=True)["typing_indicator"] == {"type": "text"}


# -- error mapping (pure) -------------------------------------------------------------------


def envelope(code: int | None, *, transient: bool | None = None) -> bytes:
    import json

    error: dict[str, object] = {"message": f"(#{code}) boom", "type": "OAuthException", "fbtrace_id": "Ab"}
    if code is not None:
        error["code"] = code
    if transient is not None:
        error["is_transient"] = transient
    error["error_data"] = {"messaging_product": "whatsapp", "details": "the details"}
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (401, 190, TokenExpired, False),
        (400, 190, TokenExpired, False),
        (401, None, TokenExpired, False),
        (400, 130429, RateLimited, True),
        (400, 131056, RateLimited, True),
        (400, 4, RateLimited, True),
        (400, 80007, RateLimited, True),
        (429, None, RateLimited, True),
        (400, 131047, WindowClosed, False),
        (400, 131026, Undeliverable, False),
        (500, 131000, TransientGraphError, True),
        (400, 131057, TransientGraphError, True),
        (500, None, TransientGraphError, True),
        (503, 100, TransientGraphError, True),
        (400, 100, PermanentGraphError, False),
        (400, 132001, PermanentGraphError, False),
        (404, None, PermanentGraphError, False),
    ],
)
def test_graph_error_mapping(status: int, code: int | None, cls: type[GraphError], retryable: bool) -> None:
    error = graph_error(status, envelope(code))
    assert type(error) is cls and error.retryable is retryable
    assert (error.code, error.status, error.details, error.fbtrace_id) == (code, status, "the details", "Ab")


def test_graph_error_is_transient_flag_and_garbage_bodies() -> None:
    assert isinstance(graph_error(400, envelope(100, transient=True)), TransientGraphError)
    html = graph_error(502, b"<html>Bad Gateway</html>")
    assert isinstance(html, TransientGraphError) and html.code is None and "Bad Gateway" in html.message
    assert graph_error(400, b"").message == "HTTP 400"
    limited = graph_error(429, b"{}", httpx.Headers({"retry-after": "7"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    assert graph_error(429, b"{}", httpx.Headers({"retry-after": "soon"})).retry_after is None


# -- against the fake server ----------------------------------------------------------------


async def test_send_returns_the_wamid(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    client = client_for(graph, http)
    first = await client.send(PNID, text_payload("16505551234", "Hello", reply_to=INBOUND))
    second = await client.send(PNID, template_payload("US.13491208655302741918", "hello_world", "en_US"))
    assert first.startswith("wamid.FAKE") and second.startswith("wamid.FAKE") and first != second
    assert [p["type"] for p in graph.sent] == ["text", "template"]
    assert graph.sent[0]["context"] == {"message_id": INBOUND}
    request = graph.requests[0]
    assert request.method == "POST" and request.path == f"/{graph.version}/{PNID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"


async def test_mark_read_and_typing(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    client = client_for(graph, http)
    await client.mark_read(PNID, INBOUND)
    await client.mark_read(PNID, INBOUND, typing=True)
    assert graph.read_marks == [read_payload(INBOUND), read_payload(INBOUND, typing=True)]
    assert graph.sent == []


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (500, None, TransientGraphError),
        (500, 131000, TransientGraphError),
        (400, 130429, RateLimited),
        (400, 131056, RateLimited),
        (400, 131047, WindowClosed),
        (400, 131026, Undeliverable),
        (401, 190, TokenExpired),
        (400, 131008, PermanentGraphError),
    ],
)
async def test_send_failures_are_typed(
    graph: FakeGraph, http: httpx.AsyncClient, status: int, code: int | None, cls: type[GraphError]
) -> None:
    client = client_for(graph, http)
    graph.fail_next(1, status, code, "scripted failure")
    with pytest.raises(cls) as info:
        await client.send(PNID, text_payload("16505551234", "Hi"))
    assert info.value.status == status and info.value.code == code
    assert info.value.details == "details of scripted failure"
    assert graph.sent == []
    assert (await client.send(PNID, text_payload("16505551234", "Hi"))).startswith("wamid.")


async def test_wrong_token_is_token_expired(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    with pytest.raises(TokenExpired) as info:
        await client_for(graph, http, token="stale").send(PNID, text_payload("1", "x"))
    assert info.value.code == 190 and info.value.subcode == 463 and not info.value.retryable


async def test_stall_is_a_retryable_timeout(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.stall_next(10)
    started = time.monotonic()
    with pytest.raises(TransientGraphError) as info:
        await client_for(graph, http, timeout=0.3).send(PNID, text_payload("1", "x"))
    assert time.monotonic() - started < 3
    assert info.value.retryable and info.value.title == "timeout" and info.value.code is None


async def test_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    client = GraphClient(
        http, base_url=f"http://127.0.0.1:{free_port()}", version="v25.0", token=TOKEN, timeout=3
    )
    with pytest.raises(TransientGraphError) as info:
        await client.mark_read(PNID, INBOUND)
    assert info.value.status is None and info.value.retryable


async def test_proxy_html_502_is_transient(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.fail_next(1, 502, raw=b"<html>502 Bad Gateway</html>", headers={"content-type": "text/html"})
    with pytest.raises(TransientGraphError):
        await client_for(graph, http).send(PNID, text_payload("1", "x"))


async def test_send_without_message_id_is_not_retryable(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.fail_next(1, 200, raw=b'{"messaging_product": "whatsapp", "messages": []}')
    with pytest.raises(PermanentGraphError) as info:
        await client_for(graph, http).send(PNID, text_payload("1", "x"))
    assert not info.value.retryable


async def test_media_download_uses_the_bearer_token(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    audio = b"OggS" + bytes(range(256)) * 40
    graph.add_media("2754859441498128", audio, "audio/ogg")
    client = client_for(graph, http)
    info = await client.media_info("2754859441498128", PNID)
    assert info["url"] == graph.media_url("2754859441498128") and info["mime_type"] == "audio/ogg"
    assert graph.requests[-1].path == f"/{graph.version}/2754859441498128?phone_number_id={PNID}"
    data, mime = await client.download(info["url"])
    assert (data, mime) == (audio, "audio/ogg")
    assert graph.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    assert await client.download_media("2754859441498128", PNID, max_bytes=len(audio)) == (audio, "audio/ogg")


async def test_media_download_without_token_is_refused(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.add_media("1001", b"x", "image/jpeg")
    response = await http.get(graph.media_url("1001"))
    assert response.status_code == 401
    with pytest.raises(TokenExpired):
        await client_for(graph, http, token="wrong").download(graph.media_url("1001"))


async def test_expired_media_url_is_refetched_once(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.add_media("1002", b"image-bytes", "image/png")
    graph.fail_next(1, 404, None, "URL expired", on="/media/")
    assert await client_for(graph, http).download_media("1002", PNID) == (b"image-bytes", "image/png")
    paths = [r.path.split("?")[0] for r in graph.requests]
    assert paths == [f"/{graph.version}/1002", "/media/1002", f"/{graph.version}/1002", "/media/1002"]
    graph.fail_next(2, 404, None, "URL expired", on="/media/")
    with pytest.raises(PermanentGraphError) as info:
        await client_for(graph, http).download_media("1002", PNID)
    assert info.value.status == 404


async def test_unknown_media_id(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    with pytest.raises(PermanentGraphError) as info:
        await client_for(graph, http).download_media("999999", PNID)
    assert info.value.code == 100 and info.value.status == 404


async def test_media_size_limit(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    graph.add_media("1003", b"x" * 5000, "video/mp4")
    client = client_for(graph, http)
    with pytest.raises(MediaTooLarge):
        await client.download_media("1003", PNID, max_bytes=4999)
    assert [r.path.split("?")[0] for r in graph.requests] == [f"/{graph.version}/1003"]  # never downloaded
    with pytest.raises(MediaTooLarge):
        await client.download(graph.media_url("1003"), max_bytes=100)


async def test_concurrent_sends_get_distinct_wamids(graph: FakeGraph, http: httpx.AsyncClient) -> None:
    client = client_for(graph, http)
    ids = await asyncio.gather(*(client.send(PNID, text_payload("1", f"m{i}")) for i in range(20)))
    assert len(set(ids)) == 20 and len(graph.sent) == 20
