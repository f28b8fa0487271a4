"""Property: whatever keys exist and whatever they try, nothing crosses a scope.

Hypothesis draws tenants' keys (some narrowed to agents, some read-only) and a random
sequence of API calls, agent-socket frames, token mints (by key and by Origin) and
signed WhatsApp webhooks against a real gateway. After every step: a key saw no
event, session, message or token outside its scope, every refused call answered
403/404 and changed nothing; at the end every feed and list of every key is checked
again.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.store.sql import SessionQuery
from tests.conftest import ADMIN, Running, make_settings, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.security.helpers import bearer, chat, replay
from tests.whatsapp.test_channel import ENV, OTHER_PNID, PNID, number, post, text_webhook

LOCAL = ["http://localhost:*"]
AGENTS: dict[str, str | None] = {  # agent → tenant
    "t0-wa": "t0",
    "t0-web": "t0",
    "t1-wa": "t1",
    "op-web": None,
}
TENANTS = ["t0", "t1", None, "t2"]
NEW_IDS = ["t0-bot", "t1-bot", "x-bot"]


def gateway_settings(url: str, graph: FakeGraph) -> Any:
    web = {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": LOCAL}
    agents = {
        "t0-wa": {**web, "tenant": "t0", "whatsapp": [number(graph)]},
        "t0-web": {**web, "tenant": "t0"},
        "t1-wa": {**web, "tenant": "t1", "whatsapp": [number(graph, OTHER_PNID, "WA_SECRET_2")]},
        "op-web": web,
    }
    return make_settings(url, agents=agents, server={"outbox_poll_seconds": 0.05})


@dataclass(frozen=True)
class KeySpec:
    tenant: str | None
    agents: tuple[str, ...] | None
    read_only: bool


key_specs = st.builds(
    KeySpec,
    tenant=st.sampled_from(TENANTS),
    agents=st.none() | st.lists(st.sampled_from([*AGENTS, *NEW_IDS]), max_size=3, unique=True).map(tuple),
    read_only=st.booleans(),
)

SESSION_OPS = ["get", "delete", "pause", "resume", "send", "template", "hangup"]
AGENT_OPS = ["message", "pause_agent", "resume_agent", "feed", "mint_chat", "mint_stream"]
actions = st.one_of(
    st.tuples(st.just("session"), st.integers(0, 9), st.sampled_from(SESSION_OPS), st.integers(0, 99)),
    st.tuples(
        st.just("agent"), st.integers(0, 9), st.sampled_from(AGENT_OPS), st.sampled_from([*AGENTS, "nope"])
    ),
    st.tuples(
        st.just("list"), st.integers(0, 9), st.sampled_from(["sessions", "contact", "events"]), st.just(0)
    ),
    st.tuples(st.just("register"), st.integers(0, 9), st.sampled_from([*AGENTS, *NEW_IDS]), st.just(0)),
    st.tuples(
        st.just("frame"), st.integers(0, 9), st.sampled_from(["send", "pause", "end"]), st.integers(0, 99)
    ),
    st.tuples(
        st.just("origin"),
        st.just(0),
        st.sampled_from(["chat", "stream", "stream_session"]),
        st.sampled_from(list(AGENTS)),
    ),
    st.tuples(st.just("webhook"), st.integers(0, 1), st.sampled_from(["a", "b"]), st.integers(0, 999)),
    st.tuples(st.just("chat"), st.just(0), st.sampled_from(list(AGENTS)), st.just(0)),
)


@dataclass
class Model:
    g: Running
    keys: list[tuple[KeySpec, str, str]]  # spec, secret, name
    tenant_of: dict[str, str | None] = field(default_factory=lambda: dict(AGENTS))
    sessions: list[str] = field(default_factory=list)

    def sees(self, spec: KeySpec | None, agent: str) -> bool:
        if spec is None:  # admin
            return True
        if agent not in self.tenant_of:
            return False
        if spec.agents is not None and agent not in spec.agents:
            return False
        return self.tenant_of[agent] == spec.tenant

    async def agent_of(self, sid: str) -> str | None:
        s = await self.g.runtime.store.session(sid)
        return None if s is None else s.agent_id

    async def snapshot(self) -> Any:
        """What a refused call must not change: sessions' state, human messages, pauses."""
        store = self.g.runtime.store
        out = []
        for sid in sorted(set(self.sessions)):
            s = await store.session(sid)
            if s is not None:
                humans = [m.id for m in await store.messages(sid) if m.source == "human"]
                out.append((sid, s.status, s.paused, humans))
        agents = {a: (row[2]) for a, row in (await store.agent_rows()).items()}
        return out, agents, sorted(self.g.runtime.directory.ids())


def check_body(model: Model, spec: KeySpec | None, body: Any) -> None:
    """Every agent named anywhere in a response is one the key sees."""
    text = json.dumps(body)
    for agent in model.tenant_of:
        if not model.sees(spec, agent):
            assert f'"agent": "{agent}"' not in text and f'"agentId": "{agent}"' not in text, (
                spec,
                agent,
                text,
            )


async def settle(g: Running) -> None:
    """Wait until no turn is pending (their replies are stored), so snapshots are stable."""
    async with asyncio.timeout(10):
        while await g.runtime.store.pending_sessions() or g.runtime.service.turns._workers:
            await asyncio.sleep(0.02)


async def step(model: Model, action: tuple[str, int, str, Any]) -> None:
    g = model.g
    kind, k, op, target = action
    spec, secret, _name = model.keys[k % len(model.keys)]
    who: KeySpec | None = None if secret == ADMIN else spec
    async with httpx.AsyncClient(base_url=g.url, headers=bearer(secret), timeout=10) as c:
        if kind == "session":
            sid = model.sessions[target % len(model.sessions)] if model.sessions else "api-000000000000"
            agent = await model.agent_of(sid)
            method, path, body = {
                "get": ("GET", f"/v1/sessions/{sid}", None),
                "delete": ("DELETE", f"/v1/sessions/{sid}", None),
                "pause": ("POST", f"/v1/sessions/{sid}/pause", None),
                "resume": ("POST", f"/v1/sessions/{sid}/resume", None),
                "send": ("POST", f"/v1/sessions/{sid}/messages", {"text": "a human"}),
                "template": ("POST", f"/v1/sessions/{sid}/template", {"name": "hello_world"}),
                "hangup": ("POST", f"/v1/calls/{sid}/hangup", None),
            }[op]
            before = await model.snapshot()
            r = await c.request(method, path, json=body)
            visible = agent is not None and model.sees(who, agent)
            # A read-only key's write is refused before anything is looked up (it learns nothing).
            if who is not None and who.read_only and method != "GET":
                assert r.status_code == 403, (action, r.text)
            elif not visible:
                assert r.status_code == 404, (action, r.text)
            else:
                assert r.status_code < 500, (action, r.text)
                check_body(model, who, r.json())
            if r.status_code in (403, 404):
                assert await model.snapshot() == before, action
        elif kind == "agent":
            agent = target
            visible = agent in model.tenant_of and model.sees(who, agent)
            writes = op in ("message", "pause_agent", "resume_agent", "mint_chat")
            before = await model.snapshot()
            if op == "feed":
                r_events = await replay(g, f"/v1/agents/{agent}/events", bearer(secret))
                if not visible:
                    assert r_events[0].get("status") == 404
                else:
                    assert all(e["agent"] == agent for e in r_events)
                return
            if op == "message":
                r = await c.post(f"/v1/agents/{agent}/messages", json={"text": "hi", "contact": "u1"})
            elif op in ("pause_agent", "resume_agent"):
                r = await c.post(f"/v1/agents/{agent}/{op.split('_')[0]}")
            else:
                channel = "chat" if op == "mint_chat" else "stream"
                r = await c.post("/v1/tokens", json={"agent": agent, "channel": channel})
            if who is not None and who.read_only and writes:
                assert r.status_code == 403, (action, r.text)
            elif not visible:
                assert r.status_code == 404, (action, r.text)
            else:
                assert r.status_code in (200, 201, 202), (action, r.text)
                if op == "message":
                    model.sessions.append(r.json()["sessionId"])
                if op == "mint_stream":  # the token reads that agent only
                    events = await replay(g, f"/v1/events?token={r.json()['token']}")
                    assert all(e["agent"] == agent for e in events)
            if r.status_code in (403, 404):
                assert await model.snapshot() == before, action
        elif kind == "list":
            if op == "events":
                events = await replay(g, "/v1/events", bearer(secret))
                assert all(model.sees(who, e["agent"]) for e in events), action
            else:
                path = "/v1/sessions" if op == "sessions" else "/v1/contacts/u1/sessions"
                r = await c.get(path)
                assert r.status_code == 200
                assert all(model.sees(who, s["agent"]) for s in r.json()["sessions"])
        elif kind == "register":
            await register_step(model, who, secret, op)
        elif kind == "frame":
            await frame_step(model, who, secret, op, target)
        elif kind == "origin":
            await origin_step(model, op, target)
        elif kind == "webhook":
            pnid = PNID if k == 0 else OTHER_PNID
            secret_ = ENV["WA_SECRET"] if k == 0 else ENV["WA_SECRET_2"]
            body = text_webhook(f"wamid.P{target}{op}{k}", "hello", sender=f"1650555{target:04d}", pnid=pnid)
            r = await post(g, body, secret=secret_)
            assert r.status_code == 200  # never refused for anyone's limits
            await settle(g)
            rows = await g.runtime.store.sessions(SessionQuery(limit=200))
            model.sessions.extend(s.id for s in rows if s.id not in model.sessions)
        elif kind == "chat":
            token = (await c.post("/v1/tokens", json={"agent": op}, headers=bearer())).json()["token"]
            model.sessions.append(await chat(g, token, "hello"))
    await settle(g)


async def register_step(model: Model, who: KeySpec | None, secret: str, agent_id: str) -> None:
    g = model.g
    before = await model.snapshot()
    try:
        async with websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=bearer(secret)) as ws:
            await ws.send(json.dumps({"event": "agent.register", "agent_id": agent_id, "config": {}}))
            async with asyncio.timeout(10):
                while (frame := json.loads(await ws.recv()))["event"] not in ("agent.registered", "error"):
                    assert model.sees(who, frame.get("agent", agent_id))
    except websockets.exceptions.ConnectionClosed as exc:
        assert who is not None and who.read_only and exc.rcvd is not None and exc.rcvd.code == 4403
        assert await model.snapshot() == before
        return
    existing = agent_id in model.tenant_of
    if existing:
        # gateway.toml agents here allow no process; process agents: only their own tenant's key.
        config_agent = agent_id in AGENTS
        ok = model.sees(who, agent_id) and not config_agent
    else:
        ok = who is None or who.agents is None or agent_id in who.agents
    assert (frame["event"] == "agent.registered") == ok, (who, agent_id, frame)
    if ok and not existing:
        model.tenant_of[agent_id] = None if who is None else who.tenant
    assert g.runtime.directory.find(agent_id) is None or (
        g.runtime.directory.get(agent_id).tenant == model.tenant_of.get(agent_id)
    )
    if not ok:
        assert await model.snapshot() == before


async def frame_step(model: Model, who: KeySpec | None, secret: str, op: str, target: int) -> None:
    """Session commands on the agent socket: only on sessions of agents the connection registered."""
    if who is not None and who.read_only:
        return  # the socket is closed for read-only keys (register_step covers it)
    g = model.g
    sid = model.sessions[target % len(model.sessions)] if model.sessions else "api-000000000000"
    agent = await model.agent_of(sid)
    before = await model.snapshot()
    async with websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=bearer(secret)) as ws:
        frame: dict[str, Any] = {"request_id": "r", "session_id": sid}
        if op == "send":
            frame |= {"event": "session.send", "text": "from a process"}
        elif op == "pause":
            frame |= {"event": "session.pause", "agent_id": agent or "nope"}
        else:
            frame |= {"event": "session.end"}
        await ws.send(json.dumps(frame))
        async with asyncio.timeout(10):
            answer = json.loads(await ws.recv())
    # This connection registered nothing: every command is refused, and a session outside
    # the scope is indistinguishable from a missing one.
    assert answer["event"] == "error", answer
    if op == "pause":  # names an agent this connection did not register
        assert answer["code"] == "forbidden"
    elif agent is None or not model.sees(who, agent):
        assert answer["code"] == "unknown_session" and str(agent) not in answer["message"]
    else:
        assert answer["code"] == "forbidden"
    assert await model.snapshot() == before


async def origin_step(model: Model, op: str, agent: str) -> None:
    g = model.g
    origin = {"origin": "http://localhost:3000"}
    async with httpx.AsyncClient(base_url=g.url, headers=origin, timeout=10) as anon:
        if op == "chat":
            r = await anon.post("/v1/tokens", json={"agent": agent})
            assert r.status_code == 201
            model.sessions.append(await chat(g, r.json()["token"], "from a page"))
            return
        if op == "stream":
            r = await anon.post("/v1/tokens", json={"agent": agent, "channel": "stream"})
            assert r.status_code == 403  # never a whole agent's feed by Origin
            return
        chats = [s for s in model.sessions if s.startswith("chat-")]
        sid = chats[-1] if chats else "chat-000000000000"
        owner = await model.agent_of(sid)
        r = await anon.post("/v1/tokens", json={"agent": agent, "channel": "stream", "sessionId": sid})
        if owner != agent:
            assert r.status_code == 404
            return
        assert r.status_code == 201
        events = await replay(g, f"/v1/events?token={r.json()['token']}")
        assert all(e.get("sessionId") == sid for e in events)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
@given(specs=st.lists(key_specs, min_size=2, max_size=5), plan=st.lists(actions, min_size=8, max_size=22))
def test_no_key_ever_sees_outside_its_scope(specs: list[KeySpec], plan: list[Any]) -> None:
    asyncio.run(scenario(specs, plan))


async def scenario(specs: list[KeySpec], plan: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.db'}"
        async with FakeGraph(token="test-token") as graph:
            async with run_gateway(gateway_settings(url, graph), env=ENV) as g:
                keys: list[tuple[KeySpec, str, str]] = [(KeySpec(None, None, False), ADMIN, "admin")]
                for i, spec in enumerate(specs):
                    name = f"key{i}"
                    secret, _ = await g.runtime.auth.create_key(
                        name,
                        spec.tenant,
                        agents=None if spec.agents is None else list(spec.agents),
                        read_only=spec.read_only,
                    )
                    keys.append((spec, secret, name))
                model = Model(g, keys)
                for action in plan:
                    await step(model, action)
                # Afterwards, every key's whole view: feeds, lists, and each session it can open.
                for spec, secret, _ in keys:
                    who = None if secret == ADMIN else spec
                    events = await replay(g, "/v1/events", bearer(secret))
                    assert all(model.sees(who, e["agent"]) for e in events)
                    async with httpx.AsyncClient(base_url=g.url, headers=bearer(secret), timeout=10) as c:
                        listed = (await c.get("/v1/sessions?limit=200")).json()["sessions"]
                        assert all(model.sees(who, s["agent"]) for s in listed)
                        for sid in set(model.sessions):
                            agent = await model.agent_of(sid)
                            r = await c.get(f"/v1/sessions/{sid}")
                            assert r.status_code == (200 if agent and model.sees(who, agent) else 404)
