"""Turns across real `gateway serve` processes (issue 14, item 2; the chaos test of items
3 and 4 is tests/multi/test_chaos.py).

Three processes on one PostgreSQL and one Redis, with a fake Graph API. "Meta" (these
tests) posts every WhatsApp webhook to a random instance and many of them to a second
one at the same moment (a redelivery racing the first delivery), and retries on
another instance when one is down. Each message must be answered exactly once, the
replies of one contact in the order of their messages.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from channels.whatsapp.signature import sign
from tests.fakes.graph_server import FakeGraph
from tests.multi.cluster import Cluster, Node
from tests.whatsapp.test_channel import PNID, text_webhook

SECRET = "multi-secret"
GRACE = 3.0  # outbox_uncertain_grace_seconds: long enough for receipts on a busy machine
LEASE = 2.0  # turn_lease_seconds


def word(contact: int, k: int) -> str:
    return f"m{contact:03d}x{k}"


def sender(contact: int) -> str:
    return f"3462{contact:08d}"


def agents(graph: FakeGraph) -> dict[str, dict[str, Any]]:
    return {
        "support": {
            "answer": "echo",
            "echo_delay_ms": 0,
            "whatsapp": [
                {
                    "phone_number_id": PNID,
                    "access_token_env": "WA_TOKEN",
                    "app_secret_env": "WA_SECRET",
                    "graph_base_url": graph.base_url,
                    "graph_version": graph.version,
                }
            ],
        }
    }


def cluster(tmp: Path, graph: FakeGraph, **server: Any) -> Cluster:
    return Cluster(
        tmp,
        n=3,
        agents=agents(graph),
        server={
            "turn_lease_seconds": LEASE,
            "outbox_poll_seconds": 0.05,
            "outbox_retry_base_seconds": 0.05,
            "outbox_uncertain_grace_seconds": GRACE,
            "shutdown_grace_seconds": 1,
            **server,
        },
        env={"WA_TOKEN": "tok", "WA_SECRET": SECRET},
    )


class Meta:
    """Posts each webhook until an instance answers 200, to random live instances."""

    def __init__(self, nodes: list[Node], rng: random.Random) -> None:
        self.nodes = nodes
        self.rng = rng
        self.client = httpx.AsyncClient(timeout=10)
        self.acked: set[str] = set()

    async def post(self, body: bytes, node: Node | None = None) -> None:
        while True:
            target = node if node is not None else self.rng.choice(self.nodes)
            node = None  # a retry goes wherever the load balancer sends it
            try:
                r = await self.client.post(
                    f"{target.url}/whatsapp/webhook",
                    content=body,
                    headers={"content-type": "application/json", "x-hub-signature-256": sign(body, SECRET)},
                )
                if r.status_code == 200:
                    return
                assert r.status_code >= 500, r.text
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


def answers(graph: FakeGraph) -> dict[str, list[list[str]]]:
    """Per contact, the words of each distinct reply in the order the replies were sent."""
    out: dict[str, list[list[str]]] = defaultdict(list)
    seen: set[str] = set()
    for body in graph.sent:
        key = str(body.get("biz_opaque_callback_data"))
        if key in seen:
            continue  # the same part again (the uncertain rule): not another answer
        seen.add(key)
        out[str(body["to"]).lstrip("+")].append(body.get("text", {}).get("body", "").split())
    return out


async def until(predicate: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.mark.timeout(120)
async def test_one_sessions_messages_at_three_instances_at_once_are_answered_once_in_order(
    tmp_path: Path,
) -> None:
    """Each contact's messages come two at a time, to different instances at the same
    moment, and each is also redelivered to a third instance at once: one turn at a time
    per session answers them (the two together, or one after the other), once each."""
    contacts, per_contact = 20, 6
    rng = random.Random(14)
    async with FakeGraph(token="tok") as graph, cluster(tmp_path, graph) as c:
        meta = Meta(c.nodes, rng)

        async def contact(i: int) -> None:
            for k in range(0, per_contact, 2):
                pair = [
                    (f"wamid.P{i:03d}K{j}", text_webhook(f"wamid.P{i:03d}K{j}", word(i, j), sender(i)))
                    for j in (k, k + 1)
                ]
                # Two messages at once on two instances; a reply goes out between pairs
                # only in the order they were acknowledged, so wait for both acks.
                nodes = rng.sample(c.nodes, 2)
                await asyncio.gather(
                    *(
                        asyncio.gather(meta.post(body, node), meta.post(body))  # + a redelivery
                        for (_w, body), node in zip(pair, nodes, strict=True)
                    )
                )
                # The next pair after this one is answered: its order is then defined.
                await until(lambda k=k: everything_answered_for(graph, i, k + 2), 30, f"contact {i} pair {k}")

        await asyncio.gather(*(contact(i) for i in range(contacts)))
        await asyncio.sleep(1.0)  # a second turn for an answered message would reply by now
        await meta.client.aclose()
    replies = answers(graph)
    for i in range(contacts):
        words = [w for reply in replies[sender(i)] for w in reply]
        assert sorted(words) == sorted(word(i, k) for k in range(per_contact)), replies[sender(i)]
        for k in range(0, per_contact, 2):  # pairs in order; within a pair, either order
            assert set(words[k : k + 2]) == {word(i, k), word(i, k + 1)}, replies[sender(i)]
    assert len(graph.sent) == len({b["biz_opaque_callback_data"] for b in graph.sent})  # no resend


def everything_answered_for(graph: FakeGraph, contact: int, upto: int) -> bool:
    got = {
        w
        for body in graph.sent
        if str(body.get("to")).lstrip("+") == sender(contact)
        for w in body["text"]["body"].split()
    }
    return all(word(contact, k) in got for k in range(upto))


async def test_a_chat_socket_on_one_instance_streams_a_turn_run_on_another(tmp_path: Path) -> None:
    """The turn runs where its lease is claimed (where the message arrived); its tokens and
    reply reach the person's socket on another instance through the bus."""
    demo = {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]}
    async with Cluster(tmp_path, n=3, agents={"demo": demo}, server={"turn_lease_seconds": LEASE}) as c:
        a, b, _ = c.nodes
        async with a.client() as client:
            r = await client.post("/v1/tokens", json={"agent": "demo", "channel": "chat"})
            token = r.json()["token"]
        async with websockets.connect(f"{a.ws_url}/chat/ws?token={token}") as ws:
            sid = json.loads(await ws.recv())["sessionId"]
            # One message through B's HTTP API into the session A's socket serves, and at the
            # same moment one through the socket itself: one turn at a time answers both.
            async with b.client() as client:
                post = asyncio.create_task(
                    client.post("/v1/agents/demo/messages", json={"text": "from-b", "sessionId": sid})
                )
                await ws.send(json.dumps({"event": "message", "text": "from-a"}))
                frames: list[dict[str, Any]] = []
                async with asyncio.timeout(20):
                    while True:
                        frames.append(json.loads(await ws.recv()))
                        done = " ".join(f["text"] for f in frames if f["event"] == "chat.done")
                        if "from-a" in done and "from-b" in done:
                            break
                r = await post
                assert r.status_code == 200, r.text
        assert any(f["event"] == "chat.token" for f in frames)
        done = [f["text"] for f in frames if f["event"] == "chat.done"]
        assert sorted(w for t in done for w in t.split()) == ["from-a", "from-b"], done  # each once
