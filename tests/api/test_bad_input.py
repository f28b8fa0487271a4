"""Bad input on every REST operation: never a 5xx, never a dropped keep-alive connection.

The operations come from the gateway's own /openapi.json (generated from the route
models), so a new route is covered as soon as it exists. Every body field, query
parameter, path parameter and documented header gets the mutations of the
reliability audit: lone surrogates, NUL, values beyond int64, wrong JSON types,
over-long strings, non-finite numbers, deep nesting. All requests of a database
run go over ONE keep-alive connection; a 500 used to close it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN, Running

# JSON text fragments put in place of one field of a valid body.
FIELD_MUTATIONS = [
    '"\\ud800"',
    '"x\\udfffy"',
    '"\\udc80\\ud800"',
    '"a\\u0000b"',
    '"\\u0000"',
    "9223372036854775808",
    "-9223372036854775809",
    "1e400",
    "NaN",
    "[]",
    "{}",
    '["\\ud800"]',
    '{"k": "\\ud800"}',
    '{"\\ud800": 1}',
    '{"k": "a\\u0000b"}',
    '{"userId": "' + "u" * 300 + '", "name": "n"}',
    '{"name": "' + "n" * 300 + '"}',
    '{"k": 1e400}',
    '"' + "x" * 300 + '"',
    '"' + "x" * 5000 + '"',
    "null",
    "true",
    "1.5",
    '""',
    '"   "',
    "[" * 40 + "]" * 40,
    '{"a":' * 40 + "1" + "}" * 40,
]

# Whole bodies.
BODY_MUTATIONS: list[bytes] = [
    b'"\\ud800"',
    b'{"\\ud800": 1}',
    b'{"\\u0000": 1}',
    b"\xff\xfe{}",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b"[]",
    b"null",
    b"{",
]

# Already percent-encoded query and path values.
QUERY_MUTATIONS = [
    "%00",
    "a%00b",
    "%ED%A0%80",
    "%F0%9F",
    "%C0%AF",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999999",
    "1e400",
    "%5B%5D",
    "%7B%7D",
    "x" * 3000,
    "%C2%B2",
]
PATH_MUTATIONS = ["%00", "a%00b", "%ED%A0%80", "x" * 200, "%C0%AF", "%C2%B2"]
HEADER_MUTATIONS: list[str | bytes] = [
    "9223372036854775808",
    "99999999999999999999",
    "²".encode(),
    "-1",
    "1e3",
    "0x10",
]

# A valid body per request model, so that one mutated field is the only fault.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "TokenRequest": {"agent": "demo"},
    "MessageRequest": {"text": "hi", "contact": "mutant"},
    "HumanMessageRequest": {"text": "hi"},
    "AgentPauseRequest": {"contact": "nobody-at-all"},
    "CallControlRequest": {},
    "TemplateRequest": {"name": "hello", "language": "en_US"},
    "WhatsAppStartRequest": {"to": "15550001111", "template": {"name": "hello"}},
    "TwilioStartRequest": {"to": "+14155550123", "text": "hi"},
    "CallRequest": {"agent": "demo", "to": "+14155550123"},
    "KeyRequest": {"name": "mutant-key"},
}


def _path_values(session_id: str) -> dict[str, str]:
    return {
        "agent": "demo",
        "session_id": session_id,
        "contact": "mutant",
        "action": "hangup",
        "key_id": "key_nope",
    }


class Probe:
    """Sends requests over one connection and records every 5xx and every reconnect."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.sent = 0
        self.server_errors: list[str] = []
        self.addresses: set[Any] = set()
        self.reconnects: list[str] = []
        self.last = ""
        self.t_last = 0.0
        self.gap = 0.0

    async def send(self, method: str, url: str, *, stream: bool, **kw: Any) -> None:
        label = f"{method} {url[:120]} {str(kw.get('content', ''))[:80]} {kw.get('headers', '')}"
        self.sent += 1
        if stream:
            await self._stream(method, url, label, **kw)
            # Keep the probe's connection busier than uvicorn's 5 s keep-alive timeout.
            await self.send("GET", "/healthz", stream=False)
            return
        t0 = asyncio.get_running_loop().time()
        r = await self.client.request(method, url, **kw)
        self.gap = t0 - self.t_last
        self.t_last = asyncio.get_running_loop().time()
        stream_info = r.extensions.get("network_stream")
        if stream_info is not None:
            address = stream_info.get_extra_info("client_addr")
            if self.addresses and address not in self.addresses:
                self.reconnects.append(f"{r.status_code} {label} gap {self.gap:.1f}s; before: {self.last}")
            self.addresses.add(address)
        self.last = f"{r.status_code} {label}"
        if r.status_code >= 500:
            self.server_errors.append(f"{r.status_code} {label}: {r.text[:200]}")

    async def _stream(self, method: str, url: str, label: str, **kw: Any) -> None:
        # A feed that accepts the request streams forever: read its head on a separate connection.
        headers = {"authorization": f"Bearer {ADMIN}", **kw.pop("headers", {})}
        async with httpx.AsyncClient(base_url=str(self.client.base_url), timeout=10) as c:
            async with c.stream(method, url, headers=headers, **kw) as r:
                if r.status_code >= 500:
                    self.server_errors.append(f"{r.status_code} {label}")
                elif r.status_code == 200:
                    async with asyncio.timeout(5):
                        async for line in r.aiter_lines():
                            if line.startswith(": connected"):
                                break


def _json_body(base: dict[str, Any], field: str, fragment: str) -> bytes:
    text = json.dumps({**base, field: "__MUTANT__"}).replace('"__MUTANT__"', fragment)
    return text.encode()


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


async def _all_mutations(g: Running, probe: Probe) -> None:
    async with g.client() as c:
        first = await c.post("/v1/agents/demo/messages", json={"text": "base", "contact": "base"})
        assert first.status_code == 200, first.text
        session_id = first.json()["sessionId"]
        spec = (await c.get("/openapi.json")).json()
    json_headers = {"content-type": "application/json"}
    deletes = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "delete":
                deletes.append((path, method, op))
                continue
            await _operation(probe, spec, path, method, op, session_id, json_headers)
    for path, method, op in deletes:  # last: they erase the session the others use
        await _operation(probe, spec, path, method, op, session_id, json_headers)


async def _operation(
    probe: Probe,
    spec: dict[str, Any],
    path: str,
    method: str,
    op: dict[str, Any],
    session_id: str,
    json_headers: dict[str, str],
) -> None:
    stream = "text/event-stream" in op["responses"].get("200", {}).get("content", {})
    params = op.get("parameters", [])
    values = _path_values(session_id)
    url = _fill(path, values)
    body_ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    model = body_ref.get("$ref", "").rsplit("/", 1)[-1]
    base: dict[str, Any] = BASE_BODIES.get(model, {})
    body_kw: dict[str, Any] = {}
    if model:
        assert model in BASE_BODIES, f"add a valid {model} to BASE_BODIES"
        body_kw = {"content": json.dumps(base).encode(), "headers": json_headers}
    for p in params:
        if p["in"] == "path":
            for bad in PATH_MUTATIONS:
                raw = dict(values)
                raw[p["name"]] = "\x00"  # placeholder, replaced below by the raw (encoded) mutation
                target = _fill(path, {k: v for k, v in raw.items() if k != p["name"]})
                target = target.replace("{" + p["name"] + "}", bad)
                await probe.send(method.upper(), target, stream=stream, **body_kw)
        elif p["in"] == "query":
            for bad in QUERY_MUTATIONS:
                await probe.send(method.upper(), f"{url}?{p['name']}={bad}", stream=stream, **body_kw)
        elif p["in"] == "header":
            for bad in HEADER_MUTATIONS:
                kw = dict(body_kw)
                kw["headers"] = {**kw.get("headers", {}), p["name"]: bad}
                await probe.send(method.upper(), url, stream=stream, **kw)
    if not model:
        return
    schema = spec["components"]["schemas"][model]
    for field in schema.get("properties", {}):
        for fragment in FIELD_MUTATIONS:
            content = _json_body(base, field, fragment)
            await probe.send(method.upper(), url, stream=stream, content=content, headers=json_headers)
    for content in BODY_MUTATIONS:
        await probe.send(method.upper(), url, stream=stream, content=content, headers=json_headers)


async def test_every_operation_survives_every_mutation(gateway_any_db: Running) -> None:
    g = gateway_any_db
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=300)
    async with g.client(limits=limits) as client:
        probe = Probe(client)
        await _all_mutations(g, probe)
    print(f"\n{probe.sent} mutated requests, {len(probe.server_errors)} answered 5xx")
    assert probe.sent > 1000
    assert probe.server_errors == [], "\n".join(probe.server_errors[:40])
    assert probe.reconnects == [], probe.reconnects


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"agent": "demo", "metadata": {"plan": "x\\ud800"}}', "metadata.plan"),
        ('{"agent": "demo", "metadata": {"plan": "a\\u0000b"}}', "metadata.plan"),
        ('{"agent": "demo", "channel": []}', "channel"),
        ('{"agent": "demo", "channel": {}}', "channel"),
        ('{"agent": ["demo"]}', "agent"),
        ('{"agent": "demo", "sessionId": "' + "s" * 65 + '"}', "sessionId"),
        ('{"agent": "demo", "metadata": {"userId": "' + "u" * 129 + '"}}', "metadata"),
    ],
)
async def test_token_refusals_name_the_field(gateway: Running, body: str, field: str) -> None:
    async with gateway.client() as c:
        r = await c.post("/v1/tokens", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert f"`{field}`" in error["message"] or error["code"] == "invalid_channel", error
    assert set(error) == {"code", "message"}


async def test_a_refused_api_call_has_stored_nothing(gateway_any_db: Running) -> None:
    g = gateway_any_db
    async with g.client() as c:
        before = (await c.get("/v1/sessions")).json()["sessions"]
        for body in (
            '{"text": "hi", "metadata": {"plan": "x\\ud800"}}',
            '{"text": "hi", "contact": {"id": "c", "name": "\\ud800"}}',
            '{"text": "hi\\u0000", "contact": "nul"}',
            '{"text": "hi", "contact": "' + "c" * 129 + '"}',
        ):
            r = await c.post(
                "/v1/agents/demo/messages", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400, r.text
        after = (await c.get("/v1/sessions")).json()["sessions"]
    assert after == before == []


@pytest.mark.parametrize(
    "query",
    [
        "since=9223372036854775808",
        "until=-9223372036854775809",
        "limit=99999999999999999999",
        "contact=a%00b",
        "channel=%00",
        "cursor=" + "OTIyMzM3MjAzNjg1NDc3NTgwOTpz",  # "9223372036854775809:s"
    ],
)
async def test_session_list_refuses_what_the_database_cannot_compare(
    gateway_any_db: Running, query: str
) -> None:
    async with gateway_any_db.client() as c:
        r = await c.get(f"/v1/sessions?{query}")
    assert r.status_code == 400, r.text
    name = query.split("=", 1)[0]
    assert f"`{name}`" in r.json()["error"]["message"]
