"""Tenants and keys on every surface, on SQLite and PostgreSQL (docs/tenants.md).

Two tenants (acme, globex) and the operator share one gateway. Each surface is asked
with each kind of key: another tenant's resource answers exactly as a missing one
(404, same body), a read-only key gets 403 on every write and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.cli import main as cli
from tests.conftest import ADMIN, Running, SseReader, make_settings, run_gateway
from tests.security.helpers import bearer, chat, mint_with, replay

LOCAL = ["http://127.0.0.1:*", "http://localhost:*"]
AGENTS = {
    "demo": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL},
    "acme-support": {"tenant": "acme", "answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL},
    "acme-sales": {"tenant": "acme", "answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL},
    "globex-support": {"tenant": "globex", "answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL},
}
TENANT_OF = {"demo": None, "acme-support": "acme", "acme-sales": "acme", "globex-support": "globex"}


@dataclass
class World:
    g: Running
    keys: dict[str, str]
    sessions: dict[str, str]  # agent → one API session of it

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.g.url, headers=bearer(self.keys[key]), timeout=10)


async def make_world(url: str, **server: Any) -> AsyncIterator[World]:
    async with run_gateway(make_settings(url, agents=AGENTS, server=server)) as g:
        auth = g.runtime.auth
        keys = {"admin": ADMIN}
        keys["acme"], _ = await auth.create_key("acme-ops", "acme")
        keys["acme-sales"], _ = await auth.create_key("acme-sales-only", "acme", agents=["acme-sales"])
        keys["acme-ro"], _ = await auth.create_key("acme-dashboard", "acme", read_only=True)
        keys["globex"], _ = await auth.create_key("globex-ops", "globex")
        keys["operator"], _ = await auth.create_key("operator-backend")
        sessions = {}
        async with httpx.AsyncClient(base_url=g.url, headers=bearer(), timeout=10) as c:
            for agent in AGENTS:
                r = await c.post(
                    f"/v1/agents/{agent}/messages",
                    json={
                        "text": f"secret of {agent}",
                        "contact": {"id": "user-1", "name": f"Name@{TENANT_OF[agent]}"},
                    },
                )
                assert r.status_code == 200, r.text
                sessions[agent] = r.json()["sessionId"]
        yield World(g, keys, sessions)


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    async for w in make_world(db_url):
        yield w


def sees(key: str, agent: str) -> bool:
    if key == "admin":
        return True
    if key == "operator":
        return TENANT_OF[agent] is None
    if key == "acme-sales":
        return agent == "acme-sales"
    if key in ("acme", "acme-ro"):
        return TENANT_OF[agent] == "acme"
    return TENANT_OF[agent] == "globex"


KEYS = ["admin", "acme", "acme-sales", "acme-ro", "globex", "operator"]


async def test_sessions_list_get_and_contacts_are_scoped(world: World) -> None:
    for key in KEYS:
        async with world.client(key) as c:
            listed = (await c.get("/v1/sessions")).json()["sessions"]
            assert {s["agent"] for s in listed} == {a for a in AGENTS if sees(key, a)}, key
            by_contact = (await c.get("/v1/contacts/user-1/sessions")).json()["sessions"]
            assert {s["agent"] for s in by_contact} == {a for a in AGENTS if sees(key, a)}, key
            for agent, sid in world.sessions.items():
                r = await c.get(f"/v1/sessions/{sid}")
                if sees(key, agent):
                    assert r.status_code == 200
                    # A contact belongs to its tenant: the name given through acme is not globex's.
                    assert r.json()["contact"]["name"] == f"Name@{TENANT_OF[agent]}"
                else:
                    assert r.status_code == 404
                    missing = await c.get("/v1/sessions/api-000000000000")
                    assert r.json() == json.loads(missing.text.replace("api-000000000000", sid))


async def test_another_tenants_agent_answers_exactly_as_a_missing_one(world: World) -> None:
    sid = world.sessions["globex-support"]
    async with world.client("acme") as c:
        for method, path, body in [
            ("POST", "/v1/agents/{a}/messages", {"text": "hi"}),
            ("POST", "/v1/agents/{a}/pause", None),
            ("POST", "/v1/agents/{a}/resume", None),
            ("GET", "/v1/agents/{a}/events", None),
            ("POST", "/v1/agents/{a}/whatsapp/messages", {"to": "34600000000", "template": {"name": "x"}}),
            ("POST", "/v1/agents/{a}/twilio/messages", {"to": "+34600000000", "text": "x"}),
            ("POST", "/v1/tokens", {"agent": "{a}", "channel": "chat"}),
            ("POST", "/v1/tokens", {"agent": "{a}", "channel": "stream"}),
            ("POST", "/v1/calls", {"agent": "{a}", "to": "+34600000000"}),
            ("GET", "/v1/agents/{a}/pricing", None),
        ]:
            answers = []
            for agent in ("globex-support", "no-such-agent"):
                data = None if body is None else json.loads(json.dumps(body).replace("{a}", agent))
                r = await c.request(method, path.replace("{a}", agent), json=data)
                answers.append((r.status_code, r.text.replace(agent, "X")))
            assert answers[0] == answers[1] and answers[0][0] == 404, (path, answers)
        for method, path, body in [
            ("GET", "/v1/sessions/{s}", None),
            ("DELETE", "/v1/sessions/{s}", None),
            ("POST", "/v1/sessions/{s}/pause", None),
            ("POST", "/v1/sessions/{s}/resume", None),
            ("POST", "/v1/sessions/{s}/messages", {"text": "I am a human"}),
            ("POST", "/v1/sessions/{s}/template", {"name": "x"}),
            ("POST", "/v1/calls/{s}/hangup", None),
            ("GET", "/v1/sessions/{s}/pricing", None),
            ("POST", "/v1/tokens", {"agent": "acme-support", "sessionId": "{s}"}),
        ]:
            answers = []
            for target in (sid, "api-0123456789ab"):
                data = None if body is None else json.loads(json.dumps(body).replace("{s}", target))
                r = await c.request(method, path.replace("{s}", target), json=data)
                answers.append((r.status_code, r.text.replace(target, "X")))
            assert answers[0] == answers[1] and answers[0][0] == 404, (path, answers)
    # Nothing of globex's changed.
    session = await world.g.runtime.store.session(sid)
    assert session is not None and session.active and not session.paused
    assert len(await world.g.runtime.store.messages(sid)) == 2


async def test_read_only_keys_get_403_on_every_write_and_change_nothing(world: World) -> None:
    sid = world.sessions["acme-support"]
    before = await world.g.runtime.store.messages(sid)
    async with world.client("acme-ro") as c:
        for method, path, body in [
            ("POST", "/v1/agents/acme-support/messages", {"text": "hi"}),
            ("POST", "/v1/agents/acme-support/pause", None),
            ("POST", "/v1/agents/acme-support/resume", None),
            ("DELETE", f"/v1/sessions/{sid}", None),
            ("POST", f"/v1/sessions/{sid}/pause", None),
            ("POST", f"/v1/sessions/{sid}/resume", None),
            ("POST", f"/v1/sessions/{sid}/messages", {"text": "human"}),
            ("POST", f"/v1/sessions/{sid}/template", {"name": "x"}),
            ("POST", "/v1/tokens", {"agent": "acme-support", "channel": "chat"}),
            ("POST", "/v1/calls", {"agent": "acme-support", "to": "+34600000000"}),
            ("POST", "/v1/keys", {"name": "more"}),
        ]:
            r = await c.request(method, path, json=body)
            assert r.status_code in (403, 404), (path, r.status_code)
            if r.status_code == 403:
                assert r.json()["error"]["code"] == "read_only"
            else:
                assert path == "/v1/keys"  # key management does not exist for non-admin keys
        # Reads work, and a dashboard may mint stream tokens for its browser.
        assert (await c.get(f"/v1/sessions/{sid}")).status_code == 200
        r = await c.post("/v1/tokens", json={"agent": "acme-support", "channel": "stream"})
        assert r.status_code == 201
    session = await world.g.runtime.store.session(sid)
    assert session is not None and session.active and not session.paused
    assert await world.g.runtime.store.messages(sid) == before
    # A read-only key cannot serve agents over the agent socket either.
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        async with websockets.connect(
            f"{world.g.ws_url}/v1/agents/ws", additional_headers=bearer(world.keys["acme-ro"])
        ) as ws:
            await ws.send(json.dumps({"event": "agent.register", "agent_id": "acme-x", "config": {}}))
            async with asyncio.timeout(5):
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_both_feeds_never_carry_another_tenants_events(world: World) -> None:
    g = world.g
    for key in ("acme", "acme-sales", "globex", "operator"):
        replayed = await replay(g, "/v1/events", bearer(world.keys[key]))
        assert replayed and all(sees(key, e["agent"]) for e in replayed), key
        # Naming another tenant's agent in the filter is the same 404 as an unknown agent.
        r = await replay(g, "/v1/events?agents=globex-support,acme-support", bearer(world.keys[key]))
        if not (sees(key, "globex-support") and sees(key, "acme-support")):
            assert r[0]["status"] == 404
    # Live, with traffic on both tenants at once.
    async with httpx.AsyncClient(base_url=g.url, timeout=10) as c:
        async with (
            c.stream("GET", "/v1/events", headers=bearer(world.keys["acme"])) as acme_feed,
            c.stream(
                "GET", "/v1/agents/globex-support/events", headers=bearer(world.keys["globex"])
            ) as globex_feed,
        ):
            acme, globex = SseReader(acme_feed), SseReader(globex_feed)
            for reader in (acme, globex):  # subscribed: nothing live can be missed from here
                assert "connected" in (await reader.next()).get("comments", [])
            tokens = {}
            for agent in ("acme-support", "globex-support", "demo"):
                tokens[agent] = (await mint_with(g, ADMIN, agent)).json()["token"]
            await asyncio.gather(*(chat(g, t, f"live {a}") for a, t in tokens.items()))
            for reader, tenant in ((acme, "acme"), (globex, "globex")):
                seen = []
                while len([e for e in seen if e["event"] == "bot.message"]) < 1:
                    frame = await reader.next_event()
                    seen.append(frame["json"] | {"event": frame["event"]})
                assert all(TENANT_OF[e["agent"]] == tenant for e in seen), seen
    # A stream token minted by a key reads one agent; minted for a session, one session.
    token = (await mint_with(g, world.keys["acme"], "acme-sales", "stream")).json()["token"]
    events = await replay(g, f"/v1/events?token={token}")
    assert events and {e["agent"] for e in events} == {"acme-sales"}


async def process(g: Running, key: str) -> Any:
    return websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=bearer(key))


async def register(ws: Any, agent_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = config if config is not None else {"answer": "process", "allowed_origins": LOCAL}
    await ws.send(json.dumps({"event": "agent.register", "agent_id": agent_id, "config": cfg}))
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame["event"] in ("agent.registered", "error"):
                return dict(frame)


async def next_turn(ws: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen = []
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame["event"] == "turn":
                return frame, seen
            seen.append(frame)


async def answer(ws: Any, turn: dict[str, Any], text: str) -> None:
    ids = {"session_id": turn["session_id"], "message_id": turn["message_id"]}
    await ws.send(json.dumps({"event": "reply.chunk", **ids, "token": text}))
    await ws.send(json.dumps({"event": "reply.end", **ids}))


async def test_agent_socket_two_tenants_live_at_once(world: World) -> None:
    g = world.g
    async with await process(g, world.keys["acme"]) as acme, await process(g, world.keys["globex"]) as globex:
        assert (await register(acme, "acme-bot"))["event"] == "agent.registered"
        assert (await register(globex, "globex-bot"))["event"] == "agent.registered"
        assert g.runtime.directory.get("acme-bot").tenant == "acme"
        assert g.runtime.directory.get("globex-bot").tenant == "globex"
        # Neither may register (take over) the other's agents, nor claim another tenant.
        assert (await register(acme, "globex-bot"))["code"] == "unknown_agent"
        assert (await register(globex, "acme-support"))["code"] in ("unknown_agent", "config_agent")
        assert (await register(acme, "acme-x", {"answer": "process", "tenant": "globex"}))["code"] == "tenant"
        async with await process(g, world.keys["acme-sales"]) as narrow:
            assert (await register(narrow, "acme-other"))["code"] == "unknown_agent"
        # Live traffic to both at once: each process gets only its own turns and events.
        tokens = [(await mint_with(g, ADMIN, a)).json()["token"] for a in ("acme-bot", "globex-bot")]
        chats = [
            asyncio.create_task(chat(g, t, f"to {a}"))
            for t, a in zip(tokens, ("acme", "globex"), strict=True)
        ]
        (acme_turn, acme_seen), (globex_turn, globex_seen) = await asyncio.gather(
            next_turn(acme), next_turn(globex)
        )
        assert acme_turn["agent_id"] == "acme-bot" and acme_turn["text"] == "to acme"
        assert globex_turn["agent_id"] == "globex-bot" and globex_turn["text"] == "to globex"
        assert all(f.get("agent", "acme-bot") == "acme-bot" for f in acme_seen)
        assert all(f.get("agent", "globex-bot") == "globex-bot" for f in globex_seen)
        await answer(acme, acme_turn, "from acme")
        await answer(globex, globex_turn, "from globex")
        await asyncio.gather(*chats)
        # Session commands on another tenant's session are refused.
        await acme.send(
            json.dumps({"event": "session.send", "session_id": globex_turn["session_id"], "text": "x"})
        )
        async with asyncio.timeout(10):
            while (frame := json.loads(await acme.recv()))["event"] != "error":
                assert frame.get("agent") in (None, "acme-bot")
        assert frame["code"] == "unknown_session"  # exactly as a session that does not exist
    # The tenant's REST view includes its process agent; the other tenant's does not.
    async with world.client("globex") as c:
        agents = {s["agent"] for s in (await c.get("/v1/sessions")).json()["sessions"]}
        assert agents == {"globex-support", "globex-bot"}


async def test_keys_api_for_admin_keys_only(world: World) -> None:
    async with world.client("admin") as c:
        r = await c.post("/v1/keys", json={"name": "acme-dash", "tenant": "acme", "readOnly": True})
        assert r.status_code == 201
        created = r.json()
        key = created.pop("key")
        assert key.startswith("sk_") and created["tenant"] == "acme" and created["readOnly"] is True
        listed = (await c.get("/v1/keys")).json()["keys"]
        assert key not in json.dumps(listed)  # shown once
        row = next(k for k in listed if k["id"] == created["id"])
        assert row["lastUsedAt"] is None
    async with httpx.AsyncClient(base_url=world.g.url, headers=bearer(key), timeout=10) as c:
        assert (await c.get("/v1/sessions")).status_code == 200
    async with world.client("admin") as c:
        row = next(k for k in (await c.get("/v1/keys")).json()["keys"] if k["id"] == created["id"])
        assert row["lastUsedAt"] is not None
        assert (await c.delete(f"/v1/keys/{created['id']}")).json() == {"id": created["id"], "revoked": True}
        assert (await c.delete(f"/v1/keys/{created['id']}")).status_code == 404
    async with httpx.AsyncClient(base_url=world.g.url, headers=bearer(key), timeout=10) as c:
        assert (await c.get("/v1/sessions")).status_code == 401
    for who in ("acme", "operator", "acme-ro"):
        async with world.client(who) as c:
            assert (await c.get("/v1/keys")).status_code == 404
            assert (await c.post("/v1/keys", json={"name": "x"})).status_code in (403, 404)


async def test_audit_names_the_key_on_events_and_messages(world: World) -> None:
    sid = world.sessions["acme-support"]
    store = world.g.runtime.store
    async with world.client("acme") as c:
        assert (await c.post(f"/v1/sessions/{sid}/pause")).status_code == 200
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"text": "a human here", "author": "Ana"})
        assert r.status_code == 201
        assert (await c.post(f"/v1/sessions/{sid}/resume")).status_code == 200
        assert (await c.post("/v1/agents/acme-sales/pause")).status_code == 200
    events = await store.events_after(0, agents=["acme-support", "acme-sales"])
    by = {
        str(e.type): e.data.get("by") for e in events if str(e.type) in ("session.paused", "session.resumed")
    }
    assert by == {"session.paused": "acme-ops", "session.resumed": "acme-ops"}
    human = next(m for m in await store.messages(sid) if m.source == "human")
    assert human.author == "Ana" and human.meta == {"by": "acme-ops"}
    sent = next(e for e in events if str(e.type) == "bot.message" and e.data.get("source") == "human")
    assert sent.data["by"] == "acme-ops"
    async with world.client("acme") as c:
        assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 200
    ended = [e for e in await store.events_after(0, session_id=sid)]
    assert ended[-1].data["reason"] == "erased" and ended[-1].data["by"] == "acme-ops"


async def test_per_key_rate_limit_answers_429_with_retry_after(sqlite_url: str) -> None:
    async for world in make_world(sqlite_url, key_requests_per_minute=5):
        async with world.client("acme") as c:
            codes = [(await c.get("/v1/sessions")).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
            r = await c.get("/v1/sessions")
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        async with world.client("globex") as c:  # another key is not slowed by acme's flood
            assert (await c.get("/v1/sessions")).status_code == 200
        async with world.client("admin") as c:  # the operator's admin key is never throttled
            assert all([(await c.get("/v1/sessions")).status_code == 200 for _ in range(8)])
        # A browser of acme's agent still chats (tokens by origin and sockets are not the key's).
        async with httpx.AsyncClient(base_url=world.g.url, timeout=10) as anon:
            r = await anon.post(
                "/v1/tokens", json={"agent": "acme-support"}, headers={"origin": "http://localhost:1"}
            )
            assert r.status_code == 201
            assert await chat(world.g, r.json()["token"], "still answered")


async def test_tenant_turn_cap_queues_one_tenants_flood_not_the_others(sqlite_url: str) -> None:
    async for world in make_world(sqlite_url, tenant_max_concurrent_turns=1):
        g = world.g
        async with (
            await process(g, world.keys["acme"]) as acme,
            await process(g, world.keys["globex"]) as globex,
        ):
            await register(acme, "acme-bot")
            await register(globex, "globex-bot")
            async with g.client() as c:
                first = asyncio.create_task(c.post("/v1/agents/acme-bot/messages", json={"text": "one"}))
                turn1, _ = await next_turn(acme)
                second = asyncio.create_task(c.post("/v1/agents/acme-bot/messages", json={"text": "two"}))
                third = asyncio.create_task(c.post("/v1/agents/globex-bot/messages", json={"text": "three"}))
                # globex is not held up by acme's running turn; acme's second turn waits.
                turn3, _ = await next_turn(globex)
                assert turn3["text"] == "three"
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await next_turn(acme)
                assert g.runtime.service.tenant_gate.running("acme") == 1
                await answer(acme, turn1, "done one")
                turn2, _ = await next_turn(acme)
                assert turn2["text"] == "two"
                await answer(acme, turn2, "done two")
                await answer(globex, turn3, "done three")
                results = [r.json()["text"] for r in await asyncio.gather(first, second, third)]
                assert results == ["done one", "done two", "done three"]


def test_cli_keys_with_tenant_agents_read_only_and_sessions_by_tenant(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "gateway.toml"
    db = tmp_path / "gw.db"
    config.write_text(
        f'[server]\ndatabase_url = "sqlite+aiosqlite:///{db}"\nauto_migrate = true\n'
        '[agents.acme-support]\ntenant = "acme"\n[agents.globex-support]\ntenant = "globex"\n'
    )
    args = ["--config", str(config)]
    assert (
        cli([*args, "keys", "create", "dash", "--tenant", "acme", "--agents", "acme-support", "--read-only"])
        == 0
    )
    out = capsys.readouterr()
    assert out.out.startswith("sk_") and "tenant acme agents acme-support read-only" in out.err
    assert cli([*args, "keys", "create", "root", "--admin"]) == 0
    capsys.readouterr()
    assert cli([*args, "keys", "list", "--tenant", "acme"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and "dash" in listed[0] and "read-only" in listed[0]

    async def seed() -> None:
        from gateway.events import ContactRef
        from gateway.settings import load_settings
        from gateway.store.db import create_engine
        from gateway.store.sql import Store
        from gateway.types import Channel

        settings = load_settings(config, env={})
        store = Store(create_engine(settings.server.database_url))
        await store.sync_agents({a: c.model_dump(mode="json") for a, c in settings.agents.items()})
        for agent in ("acme-support", "globex-support"):
            await store.ingest_message(
                agent_id=agent,
                channel=Channel.API,
                text="hello",
                contact=ContactRef(channel=Channel.API, address="same-person"),
            )
        await store.close()

    asyncio.run(seed())
    assert cli([*args, "sessions", "--tenant", "acme"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 1 and "\tacme-support\t" in rows[0]
    out_file = tmp_path / "acme.jsonl"
    assert cli([*args, "export", "--tenant", "globex", "-o", str(out_file)]) == 0
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [e["agent"] for e in exported] == ["globex-support"]


async def test_keys_declared_in_gateway_toml_take_the_same_scopes(sqlite_url: str) -> None:
    import hashlib

    def declared(name: str, **scope: Any) -> dict[str, Any]:
        return {"name": name, "sha256": hashlib.sha256(f"sk_{name}".encode()).hexdigest(), **scope}

    keys = [
        declared("acme-dash", tenant="acme", agents=["acme-sales"], read_only=True),
        declared("root", admin=True),
    ]
    async with run_gateway(make_settings(sqlite_url, agents=AGENTS, api_keys=keys)) as g:
        async with g.client() as c:
            for agent in AGENTS:
                assert (await c.post(f"/v1/agents/{agent}/messages", json={"text": "x"})).status_code == 200
        async with httpx.AsyncClient(base_url=g.url, headers=bearer("sk_acme-dash"), timeout=10) as c:
            listed = (await c.get("/v1/sessions")).json()["sessions"]
            assert {s["agent"] for s in listed} == {"acme-sales"}
            r = await c.post("/v1/agents/acme-sales/pause")
            assert r.status_code == 403 and r.json()["error"]["code"] == "read_only"
        async with httpx.AsyncClient(base_url=g.url, headers=bearer("sk_root"), timeout=10) as c:
            assert len((await c.get("/v1/sessions")).json()["sessions"]) == len(AGENTS)
            assert (await c.get("/v1/keys")).status_code == 200
