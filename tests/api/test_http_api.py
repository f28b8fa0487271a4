"""REST surface against a real server: tokens, agent messages, sessions, ops, bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.auth import Auth
from tests.conftest import ADMIN, Running, SseReader, make_settings, run_gateway


async def test_tokens_by_origin_or_key(gateway: Running) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        ok = await c.post("/v1/tokens", json={"agent": "demo"}, headers={"origin": "http://localhost:5173"})
        assert ok.status_code == 201
        body = ok.json()
        assert body["expiresIn"] == 60 and body["token"].startswith("tk_") and body["server"] == gateway.url
        assert ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        bad = await c.post("/v1/tokens", json={"agent": "demo"}, headers={"origin": "https://evil.example"})
        assert bad.status_code == 403 and bad.json()["error"]["code"] == "origin_not_allowed"
        none = await c.post("/v1/tokens", json={"agent": "demo"})
        assert none.status_code == 403
        wrong = await c.post(
            "/v1/tokens", json={"agent": "demo"}, headers={"authorization": "Bearer sk_nope"}
        )
        assert wrong.status_code == 401
        pre = await c.options(
            "/v1/tokens", headers={"origin": "http://127.0.0.1:9999", "access-control-request-method": "POST"}
        )
        assert (
            pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://127.0.0.1:9999"
        )
    async with gateway.client() as c:
        r = await c.post("/v1/tokens", json={"agent": "demo", "channel": "stream"})
        assert r.status_code == 201
        assert (await c.post("/v1/tokens", json={"agent": "ghost"})).status_code == 404
        assert (await c.post("/v1/tokens", json={"agent": "demo", "channel": "voice"})).status_code == 400


async def test_created_keys_work_and_revoked_keys_do_not(gateway: Running) -> None:
    auth: Auth = gateway.runtime.auth
    key, record = await auth.create_key("ops")
    async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}) as c:
        assert (await c.get("/v1/sessions")).status_code == 200
        assert await gateway.runtime.store.revoke_api_key(record.id)
        assert (await c.get("/v1/sessions")).status_code == 401
    stored = await gateway.runtime.store.api_keys()
    assert stored[0].prefix == key[:10]  # only a prefix and the hash are stored


async def test_message_json_answer_and_session_continuation(gateway_any_db: Running) -> None:
    async with gateway_any_db.client() as c:
        r = await c.post("/v1/agents/demo/messages", json={"text": "hello api", "contact": "user-7"})
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["text"] == "hello api" and first["sessionId"].startswith("api-")
        r = await c.post("/v1/agents/demo/messages", json={"text": "again", "contact": "user-7"})
        assert r.json()["sessionId"] == first["sessionId"]  # the contact's active session
        r = await c.post("/v1/agents/demo/messages", json={"text": "by id", "sessionId": first["sessionId"]})
        assert r.json()["text"] == "by id"
        record = (await c.get(f"/v1/sessions/{first['sessionId']}")).json()
    assert [t["text"] for t in record["transcript"]] == [
        "hello api",
        "hello api",
        "again",
        "again",
        "by id",
        "by id",
    ]
    assert record["contact"] == {"id": "user-7", "name": None} and record["from"] == "user-7"


async def test_message_streams_as_sse(gateway: Running) -> None:
    async with gateway.client() as c:
        async with c.stream(
            "POST",
            "/v1/agents/demo/messages",
            json={"text": "stream me please"},
            headers={"accept": "text/event-stream"},
        ) as r:
            assert r.status_code == 200
            feed = SseReader(r)
            frames = []
            while True:
                f = await feed.next_event()
                frames.append(f)
                if f["event"] == "done":
                    break
    assert frames[0]["event"] == "session" and frames[0]["json"]["sessionId"].startswith("api-")
    assert "".join(f["json"]["text"] for f in frames if f["event"] == "token") == "stream me please"
    assert frames[-1]["json"]["text"] == "stream me please"


async def test_sessions_list_filters_pagination_and_delete(gateway: Running) -> None:
    async with gateway.client() as c:
        ids = []
        for i in range(5):
            ids.append(
                (await c.post("/v1/agents/demo/messages", json={"text": f"t{i}", "contact": f"c{i}"})).json()[
                    "sessionId"
                ]
            )
        page = (await c.get("/v1/sessions?limit=2")).json()
        assert len(page["sessions"]) == 2 and page["nextCursor"]
        seen = [s["sessionId"] for s in page["sessions"]]
        while page["nextCursor"]:
            page = (await c.get(f"/v1/sessions?limit=2&cursor={page['nextCursor']}")).json()
            seen += [s["sessionId"] for s in page["sessions"]]
        assert sorted(seen) == sorted(ids)
        only = (await c.get("/v1/sessions?contact=c3&channel=api&status=active&agent=demo")).json()[
            "sessions"
        ]
        assert [s["sessionId"] for s in only] == [ids[3]]
        # Each row carries its last message (the echo reply), so a list needs no second request.
        last = only[0]["lastMessage"]
        assert last["role"] == "assistant" and last["source"] == "agent" and last["text"] == "t3"
        long = await c.post("/v1/agents/demo/messages", json={"text": "y" * 900, "sessionId": ids[2]})
        assert long.status_code == 200
        row = (await c.get("/v1/sessions?contact=c2")).json()["sessions"][0]
        assert len(row["lastMessage"]["text"]) == 200 and row["lastMessage"]["text"].endswith("…")
        gone = await c.delete(f"/v1/sessions/{ids[3]}")
        assert gone.status_code == 200 and gone.json()["erased"] is True
        tomb = (await c.get(f"/v1/sessions/{ids[3]}")).json()
        assert tomb["status"] == "ended" and tomb["reason"] == "erased" and tomb["messages"] == []
        erased_row = (await c.get("/v1/sessions?contact=c3")).json()["sessions"][0]
        assert erased_row["lastMessage"] is None
        assert (await c.get("/v1/sessions/nope")).status_code == 404
        assert (await c.delete("/v1/sessions/nope")).status_code == 404
        assert (await c.get("/v1/sessions?limit=0")).status_code == 400
        assert (await c.get("/v1/sessions?cursor=%%%")).status_code == 400
        ended = await c.post("/v1/agents/demo/messages", json={"text": "x", "sessionId": ids[3]})
        assert ended.status_code == 409


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"content": b"[1]", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        (
            {"content": b"text=hi", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            415,
            "unsupported_media_type",
        ),
        ({"json": {"text": ""}}, 400, "empty_text"),
        ({"json": {"text": "x" * 4097}}, 400, "text_too_long"),
        ({"json": {"text": 12}}, 400, "invalid_text"),
        ({"json": {"text": "hi", "contact": 12}}, 400, "invalid_contact"),
        ({"json": {"text": "hi", "metadata": "m"}}, 400, "invalid_field"),
        ({"json": {"text": "hi", "sessionId": "chat-000000000000"}}, 404, "unknown_session"),
        (
            {"content": b"{" + b" " * 2_000_000 + b"}", "headers": {"content-type": "application/json"}},
            413,
            "payload_too_large",
        ),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    gateway: Running, kwargs: dict[str, object], status: int, code: str
) -> None:
    async with gateway.client() as c:
        r = await c.post("/v1/agents/demo/messages", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_auth_and_unknown_routes(gateway: Running) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        assert (await c.post("/v1/agents/demo/messages", json={"text": "x"})).status_code == 401
        r = await c.post("/v1/agents/demo/messages", json={"text": "x"}, headers={"authorization": "Basic a"})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
        r = await c.post(
            "/v1/agents/ghost/messages", json={"text": "x"}, headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_agent"
        r = await c.get("/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.put("/v1/sessions")
        assert r.status_code == 405


async def test_ops_endpoints(gateway: Running) -> None:
    async with gateway.client() as c:
        await c.post("/v1/agents/demo/messages", json={"text": "count me"})
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "bus": "ok"}
        metrics = (await c.get("/metrics")).text
        for name in (
            "gateway_http_requests_total",
            "gateway_turns_total",
            "gateway_turn_seconds_bucket",
            "gateway_tokens_streamed_total",
            "gateway_websockets_active",
            "gateway_sse_clients_active",
            "gateway_turn_first_token_seconds_bucket",
        ):
            assert name in metrics, name
        assert 'route="MessageRoutes.post"' in metrics
        spec = (await c.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.") and "/v1/tokens" in spec["paths"]
        page = await c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


async def test_unknown_config_key_is_named(tmp_path: object) -> None:
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    path = tmp_path / "gateway.toml"  # type: ignore[operator]
    path.write_text('[agents.support]\nanswer = "llm"\nprompt = 3\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    text = info.value.message
    assert str(path) in text and "agents.support.prompt" in text and "valid string" in text
    path.write_text("[server]\nport = 'eighty'\n")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(path, env={})
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, env={})
    with pytest.raises(ConfigError, match="GATEWAY_PORT"):
        load_settings(None, env={"GATEWAY_PORT": "x"})


async def test_settings_from_env_and_file(tmp_path: object, sqlite_url: str) -> None:
    from gateway.settings import load_settings

    path = tmp_path / "gateway.toml"  # type: ignore[operator]
    path.write_text(
        '[server]\nport = 9000\n[agents.support]\nanswer = "echo"\nallowed_origins = ["https://*.example.com"]\n'
    )
    s = load_settings(
        path, env={"GATEWAY_PORT": "9100", "GATEWAY_ADMIN_KEY": "k", "GATEWAY_DATABASE_URL": sqlite_url}
    )
    assert s.server.port == 9100 and s.server.admin_key == "k" and s.server.database_url == sqlite_url
    assert list(s.agents) == ["support"] and not s.server.auto_migrate
    d = load_settings(None, env={})
    assert list(d.agents) == ["demo"] and d.agents["demo"].answer == "echo" and d.server.auto_migrate


async def test_origin_patterns() -> None:
    from gateway.auth import origin_allowed

    pats = ["https://demo.site", "https://*.site", "http://localhost:*"]
    assert origin_allowed("https://demo.site", pats)
    assert origin_allowed("https://a.b.site", pats)
    assert origin_allowed("http://localhost:3000", pats)
    assert not origin_allowed("http://demo.site", pats)
    assert not origin_allowed("https://evil.com/x.site", pats)
    assert not origin_allowed("http://localhost.evil.com:80", pats)
    assert not origin_allowed(None, pats)
    assert not origin_allowed("null", pats)


async def test_paused_inputs_do_not_break_json(sqlite_url: str) -> None:
    async with run_gateway(make_settings(sqlite_url)) as g, g.client() as c:
        r = await c.post(
            "/v1/agents/demo/messages",
            content=json.dumps({"text": "ünïcødé ✓"}).encode(),
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert r.json()["text"] == "ünïcødé ✓"
