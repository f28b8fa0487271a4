"""Real `gateway serve` processes on one PostgreSQL and one Redis (issue 14).

What crosses processes here: the event feeds and `Last-Event-ID` (item 1), and the
one owner of the timers surviving its owner's SIGKILL (item 5).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import websockets

from tests.conftest import SseReader
from tests.multi.cluster import Cluster, Endpoint, Node


async def mint(node: Endpoint) -> str:
    async with node.client() as c:
        r = await c.post("/v1/tokens", json={"agent": "demo", "channel": "chat"})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


async def chat(node: Endpoint, texts: list[str]) -> str:
    async with websockets.connect(f"{node.ws_url}/chat/ws?token={await mint(node)}") as ws:
        sid = json.loads(await ws.recv())["sessionId"]
        for text in texts:
            await ws.send(json.dumps({"event": "message", "text": text}))
            async with asyncio.timeout(15):
                while json.loads(await ws.recv())["event"] != "chat.done":
                    pass
    return str(sid)


async def replay(node: Node, after: int = 0) -> list[dict[str, Any]]:
    """Everything the store has after `after`, read through `node`'s feed."""
    async with node.client() as c, c.stream("GET", "/v1/events", headers={"last-event-id": str(after)}) as r:
        feed, out = SseReader(r), []
        while (f := await feed.next_event(15))["event"] != "stream.caughtUp":
            out.append(f)
        return out


async def test_chat_on_a_feed_on_b_resume_on_c(tmp_path: Path) -> None:
    async with Cluster(tmp_path, n=3) as cluster:
        a, b, c = cluster.nodes
        async with b.client() as client, client.stream("GET", "/v1/events") as r:
            live = SseReader(r)
            await live.next()  # ": connected"
            # Sessions on A and C at once: their commits interleave in the one event log.
            await asyncio.gather(
                chat(a, ["one", "two", "three"]), chat(a, ["four"]), chat(c, ["five", "six"])
            )
            stored = await replay(c)
            last = int(stored[-1]["id"])
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(15):
                while not seen or int(seen[-1]["id"]) < last:
                    frame = await live.next_event()
                    if "id" in frame:
                        seen.append(frame)
        seqs = [int(f["id"]) for f in seen]
        assert seqs == [int(f["id"]) for f in stored]  # every event, in seq order, once
        assert len(seqs) == 3 + 6 * 2  # per session: started; per message: user + bot
        assert {f["event"] for f in seen} == {"session.started", "user.message", "bot.message"}

        # Resume on C from the middle of what B showed, while A keeps writing.
        middle = seqs[len(seqs) // 2]
        async with c.client() as client:
            headers = {"last-event-id": str(middle)}
            async with client.stream("GET", "/v1/events", headers=headers) as r:
                feed = SseReader(r)
                resumed = []
                while (f := await feed.next_event(15))["event"] != "stream.caughtUp":
                    resumed.append(int(f["id"]))
                assert resumed == [s for s in seqs if s > middle]
                await chat(a, ["seven"])
                after = [await feed.next_event(15) for _ in range(3)]
        assert [int(f["id"]) for f in after] == [last + 1, last + 2, last + 3]
        assert [f["event"] for f in after] == ["session.started", "user.message", "bot.message"]


async def test_the_leader_is_killed_and_another_ends_idle_sessions_once(tmp_path: Path) -> None:
    limits = {"idle_timeout_seconds": 3.0, "idle_warning_seconds": 0, "idle_grace_seconds": 0}
    agents = {"demo": {"answer": "echo", "echo_delay_ms": 0, "limits": limits}}
    server = {"limits_sweep_seconds": 0.2}
    async with Cluster(tmp_path, n=3, agents=agents, server=server) as cluster:
        leader = await cluster.leader()
        others = [n for n in cluster.nodes if n is not leader]
        sids = [await chat(leader, ["on the leader"]), await chat(others[0], ["on a follower"])]

        killed_at = time.monotonic()
        leader.kill()
        successor = await cluster.leader(among=others)
        takeover = time.monotonic() - killed_at
        print(f"leader SIGKILLed: another instance leads after {takeover:.2f} s")
        assert takeover < 5  # leader_check_seconds = 0.5

        sids.append(await chat(successor, ["after the kill"]))
        async with asyncio.timeout(20):
            while True:
                ended = [f for f in await replay(others[1]) if f["event"] == "session.ended"]
                if {f["json"]["sessionId"] for f in ended} >= set(sids):
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a second sweeper, if there were one, would act by now
        ended = [f["json"]["sessionId"] for f in await replay(others[0]) if f["event"] == "session.ended"]
        assert sorted(ended) == sorted(sids)  # each exactly once
        assert all(
            f["json"]["reason"] == "idle_timeout"
            for f in await replay(others[0])
            if f["event"] == "session.ended"
        )

        # The killed instance comes back as a follower: still one leader.
        await leader.start()
        assert await cluster.leader() is successor
