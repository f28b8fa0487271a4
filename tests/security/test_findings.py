"""The security audit's findings (issue 12), each tried as an attacker would.

Every test here failed on the code before the fix: a stream token minted with a
fakeable Origin replayed a whole agent's history; any key could take over a
gateway.toml agent or point a webhook agent at an internal URL; webhook payloads
made the gateway fetch any URL with the provider's credentials.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from channels.twilio.client import TwilioClient
from channels.twilio.errors import TwilioError
from channels.whatsapp.client import GraphClient
from channels.whatsapp.errors import GraphError
from tests.conftest import ADMIN, Running, make_settings, mint, run_gateway
from tests.security.helpers import bearer, chat, replay

ORIGIN = {"origin": "http://localhost:3000"}


# ------------------------------------------------------- stream tokens by origin


async def test_origin_minted_stream_token_never_opens_a_whole_agent_feed(db_url: str) -> None:
    async with run_gateway(make_settings(db_url)) as g:
        victim = await chat(g, await mint(g), "my card number is 4111")
        async with httpx.AsyncClient(base_url=g.url, headers=ORIGIN, timeout=10) as anon:
            # The attack: a stream token with only an Origin header, for the agent's whole feed.
            r = await anon.post("/v1/tokens", json={"agent": "demo", "channel": "stream"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "session_required"
            # A page's own conversation: a chat token by origin, then a stream token for it.
            r = await anon.post("/v1/tokens", json={"agent": "demo", "channel": "chat"})
            mine = await chat(g, r.json()["token"], "hello from my page")
            r = await anon.post("/v1/tokens", json={"agent": "demo", "channel": "stream", "sessionId": mine})
            assert r.status_code == 201
            token = r.json()["token"]
        events = await replay(g, f"/v1/agents/demo/events?token={token}")
        assert events and {e["sessionId"] for e in events} == {mine}
        assert not any("4111" in json.dumps(e) for e in events)
        # A session query for another session cannot widen it.
        async with httpx.AsyncClient(base_url=g.url, headers=ORIGIN, timeout=10) as anon:
            r = await anon.post("/v1/tokens", json={"agent": "demo", "channel": "stream", "sessionId": mine})
            token = r.json()["token"]
        widened = await replay(g, f"/v1/events?token={token}&session={victim}")
        assert widened[0]["status"] == 404


async def test_origin_tokens_open_only_browser_chat_sessions(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g:
        async with g.client() as c:  # an API session (a backend's conversation), not a page's
            r = await c.post("/v1/agents/demo/messages", json={"text": "private"})
            api_session = r.json()["sessionId"]
        async with httpx.AsyncClient(base_url=g.url, headers=ORIGIN, timeout=10) as anon:
            for channel in ("chat", "stream"):
                r = await anon.post(
                    "/v1/tokens", json={"agent": "demo", "channel": channel, "sessionId": api_session}
                )
                assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session"


async def test_minting_through_an_origin_is_rate_limited_per_origin(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, server={"origin_mints_per_minute": 3})
    async with run_gateway(settings) as g, httpx.AsyncClient(base_url=g.url, timeout=10) as anon:
        codes = []
        for _ in range(4):
            r = await anon.post("/v1/tokens", json={"agent": "demo"}, headers=ORIGIN)
            codes.append(r.status_code)
        assert codes == [201, 201, 201, 429]
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limited"
        # Another origin has its own budget; an API key is not limited by the origin's.
        r = await anon.post("/v1/tokens", json={"agent": "demo"}, headers={"origin": "http://127.0.0.1:5000"})
        assert r.status_code == 201
        assert (await anon.post("/v1/tokens", json={"agent": "demo"}, headers=bearer())).status_code == 201


# ------------------------------------------------------------ agent.register


async def _register(g: Running, key: str, agent_id: str, config: dict[str, Any]) -> dict[str, Any]:
    async with websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=bearer(key)) as ws:
        await ws.send(json.dumps({"event": "agent.register", "agent_id": agent_id, "config": config}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame["event"] in ("agent.registered", "error"):
                    return dict(frame)


async def test_a_key_cannot_take_over_or_redefine_a_gateway_toml_agent(db_url: str) -> None:
    async with run_gateway(make_settings(db_url)) as g:
        key, _ = await g.runtime.auth.create_key("some-backend")
        for who in (key, ADMIN):
            frame = await _register(g, who, "demo", {"answer": "process", "prompt": "exfiltrate"})
            assert frame["event"] == "error" and frame["code"] == "config_agent"
        config = g.runtime.directory.get("demo")
        assert config.answer == "echo" and config.prompt == ""
        assert g.runtime.directory.origin("demo") == "config"
        # The next customer turn is still answered by the configured agent.
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"event": "message", "text": "still echo"}))
            async with asyncio.timeout(10):
                while (frame := json.loads(await ws.recv()))["event"] != "chat.done":
                    pass
            assert frame["text"] == "still echo"


async def test_a_config_agent_that_allows_processes_is_served_never_redefined(sqlite_url: str) -> None:
    agents = {"desk": {"answer": "process", "prompt": "the operator's prompt"}}
    async with run_gateway(make_settings(sqlite_url, agents=agents)) as g:
        frame = await _register(g, ADMIN, "desk", {"answer": "echo", "prompt": "mine now"})
        assert frame["event"] == "agent.registered"
        config = g.runtime.directory.get("desk")
        assert config.answer == "process" and config.prompt == "the operator's prompt"
        stored = (await g.runtime.store.agent_rows())["desk"]
        assert stored[0] == "config" and stored[1]["prompt"] == "the operator's prompt"


async def test_non_admin_keys_cannot_create_agents_that_call_urls(sqlite_url: str) -> None:
    async with FakeTarget() as target:
        async with run_gateway(make_settings(sqlite_url)) as g:
            key, _ = await g.runtime.auth.create_key("tenant-backend", "acme")
            webhook = {"answer": "webhook", "webhook": {"url": target.url}}
            frame = await _register(g, key, "hooked", webhook)
            assert frame["code"] == "agent_kind_not_allowed"
            tool = {"answer": "process", "tools": [{"name": "t", "url": target.url}]}
            assert (await _register(g, key, "tooled", tool))["code"] == "agent_kind_not_allowed"
            llm = {"llm": {"base_url": target.url, "model": "m", "api_key_env": "GATEWAY_ADMIN_KEY"}}
            assert (await _register(g, key, "smart", llm))["code"] == "agent_kind_not_allowed"
            assert "hooked" not in g.runtime.directory and "smart" not in g.runtime.directory
        assert target.hits == 0


async def test_outbound_urls_to_private_ranges_are_refused_unless_allowed(sqlite_url: str) -> None:
    server = {"allow_private_urls": False, "key_agent_kinds": ["echo", "process", "webhook", "llm"]}
    async with run_gateway(make_settings(sqlite_url, server=server)) as g:
        key, _ = await g.runtime.auth.create_key("tenant-backend", "acme")
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://[::1]:9/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://0.0.0.0/x",
            "file:///etc/passwd",
        ):
            for who in (key, ADMIN):
                frame = await _register(g, who, "hooked", {"answer": "webhook", "webhook": {"url": url}})
                assert frame["event"] == "error" and frame["code"] == "url_not_allowed", (url, frame)
        # Naming the gateway's own secrets for an LLM key is refused too.
        llm = {"llm": {"base_url": "http://127.0.0.1:9", "model": "m", "api_key_env": "GATEWAY_ADMIN_KEY"}}
        assert (await _register(g, key, "smart", llm))["code"] in ("env_not_allowed", "url_not_allowed")


# ------------------------------------------------------------ provider media


class FakeTarget:
    """An HTTP server on 127.0.0.1 that counts what reaches it (an internal service)."""

    def __init__(self) -> None:
        self.hits = 0
        self.auth: list[str] = []

    async def __aenter__(self) -> FakeTarget:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("authorization:"):
                    self.auth.append(line)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/x"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


SID = "AC" + "1" * 32


def _recording(handler: Any) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)  # type: ignore[no-any-return]

    return httpx.AsyncClient(transport=httpx.MockTransport(record)), seen


async def test_twilio_media_is_fetched_from_twilio_only_with_credentials_only_there() -> None:
    media = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/MM1/Media/ME1"

    def twilio(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.twilio.com":
            return httpx.Response(307, headers={"location": "https://s3-external-1.amazonaws.com/media/ME1"})
        return httpx.Response(200, content=b"OggS", headers={"content-type": "audio/ogg"})

    http, seen = _recording(twilio)
    client = TwilioClient(http, base_url="https://api.twilio.com", account_sid=SID, auth_token="secret")
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "https://evil.example/2010-04-01/Accounts/" + SID + "/x",
        "https://api.twilio.com.evil.example/2010-04-01/Accounts/" + SID + "/x",
        f"https://api.twilio.com/2010-04-01/Accounts/{'AC' + '9' * 32}/Messages/MM1/Media/ME1",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/../../x",
        f"https://user:pw@api.twilio.com/2010-04-01/Accounts/{SID}/x",
    ):
        with pytest.raises(TwilioError):
            await client.download(url, max_bytes=1000)
    assert seen == []  # nothing was fetched
    assert await client.download(media, max_bytes=1000) == (b"OggS", "audio/ogg")
    assert seen[0].headers["authorization"].startswith("Basic ")
    assert "authorization" not in seen[1].headers  # the storage host never sees the credentials
    # A redirect to a host that is not Twilio's is not followed.
    seen.clear()

    def rogue(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://127.0.0.1:6379/"})

    http, seen = _recording(rogue)
    client = TwilioClient(http, base_url="https://api.twilio.com", account_sid=SID, auth_token="secret")
    with pytest.raises(TwilioError):
        await client.download(media, max_bytes=1000)
    assert [r.url.host for r in seen] == ["api.twilio.com"]
    # Sizes are bounded.
    http, seen = _recording(lambda r: httpx.Response(200, content=b"x" * 5000))
    client = TwilioClient(http, base_url="https://api.twilio.com", account_sid=SID, auth_token="secret")
    with pytest.raises(TwilioError):
        await client.download(media, max_bytes=1000)


async def test_whatsapp_media_ids_are_ids_and_the_token_goes_to_meta_only() -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.host == "graph.facebook.com":
            url = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
            return httpx.Response(200, json={"url": url, "mime_type": "audio/ogg", "id": "1"})
        return httpx.Response(200, content=b"OggS", headers={"content-type": "audio/ogg"})

    http, seen = _recording(graph)
    client = GraphClient(http, base_url="https://graph.facebook.com", version="v21.0", token="EAAG-secret")
    for bad in ("../../x", "1/../../me", "1?fields=x", "me", "", "1#x"):
        with pytest.raises(GraphError):
            await client.download_media(bad)
    with pytest.raises(GraphError):
        await client.download("http://169.254.169.254/latest")
    with pytest.raises(GraphError):
        await client.download("https://evil.example/lookaside.fbsbx.com")
    assert seen == []
    assert await client.download_media("1234567890") == (b"OggS", "audio/ogg")
    assert [r.url.host for r in seen] == ["graph.facebook.com", "lookaside.fbsbx.com"]

    # Graph pointing at a foreign host never gets the token.
    def rogue(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"url": "http://127.0.0.1:8080/steal", "id": "1"})

    http, seen = _recording(rogue)
    client = GraphClient(http, base_url="https://graph.facebook.com", version="v21.0", token="EAAG-secret")
    with pytest.raises(GraphError):
        await client.download_media("1234567890")
    assert [r.url.host for r in seen] == ["graph.facebook.com"]
