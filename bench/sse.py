"""SSE fan-out: S subscribers, events produced at R/s for D seconds, latency per delivery.

Producer (both servers): an open-loop ticker in the load generator that, every 1/R s,
POSTs a message carrying `bench-ts:<time.time()>` without waiting for earlier posts.
- gateway: `POST /v1/agents/demo/messages` (JSON answer mode, API key, one session
  reused for the run). The gateway stores the `user.message` (its commit publishes
  the event) and runs an echo turn (a `bot.token` and a `bot.message` follow on the
  bus). Subscribers read `GET /v1/events?types=user.message` with the admin key, so
  each tick is exactly one delivered frame per subscriber, as on the bare server;
  the turn's other events still reach every feed and are filtered there.
- bare: `POST /publish` with a JSON body of the same shape and size as the gateway's
  `user.message` event; each sse-starlette subscriber gets it via its own queue.

Latency = arrival time of the frame in the subscriber process - the timestamp in the
text (same clock, same machine), so it includes the POST itself. Subscribers run in
`bench.sse_client` processes on raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_KEY, ROOT, ServerProc, percentile, running
from bench.report import Row, Target


@dataclass
class SseParams:
    subscribers: int = 1000
    rate: float = 10.0
    seconds: float = 10.0
    clients: int = 1  # load-generator processes holding the subscribers
    drain_s: float = 1.0  # wait after the last event before counting
    # The connection row: this many subscribers connect (0 errors wanted), then get
    # `many_seconds` of events at `rate`. 0 skips it. Held by at least `many_clients`
    # processes (≤ 2,500 sockets each: the client's CPU, and the fd limit).
    many: int = 10_000
    many_seconds: float = 3.0
    many_clients: int = 4


class Producer:
    def __init__(self, server: ServerProc) -> None:
        self.server = server
        self.gateway = server.kind == "gateway"
        self.client = httpx.AsyncClient(
            base_url=server.url,
            timeout=30,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            limits=httpx.Limits(max_connections=64),
        )
        self.session_id = ""
        self.errors = 0

    async def setup(self) -> None:
        if self.gateway:
            r = await self.client.post("/v1/agents/demo/messages", json={"text": "bench producer"})
            r.raise_for_status()
            self.session_id = r.json()["sessionId"]
        else:
            self.session_id = "chat-" + uuid.uuid4().hex[:12]

    async def send(self) -> None:
        text = f"bench-ts:{time.time():.6f}"
        try:
            if self.gateway:
                r = await self.client.post(
                    "/v1/agents/demo/messages", json={"text": text, "sessionId": self.session_id}
                )
            else:
                body = {
                    "event": "user.message",
                    "seq": 0,
                    "ts": int(time.time() * 1000),
                    "agent": "demo",
                    "sessionId": self.session_id,
                    "channel": "api",
                    "messageId": "msg_" + uuid.uuid4().hex[:26],
                    "text": text,
                    "type": "text",
                    "paused": False,
                }
                r = await self.client.post("/publish", content=json.dumps(body, separators=(",", ":")))
            if r.status_code >= 300:
                self.errors += 1
        except httpx.HTTPError:
            self.errors += 1

    async def run(self, rate: float, seconds: float) -> int:
        count = int(rate * seconds)
        t0 = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.send()))
        await asyncio.gather(*tasks)
        return count

    async def close(self) -> None:
        await self.client.aclose()


async def _spawn_clients(
    server: ServerProc, subscribers: int, clients: int
) -> list[asyncio.subprocess.Process]:
    path, auth = ("/v1/events?types=user.message", ADMIN_KEY) if server.kind == "gateway" else ("/events", "")
    procs = []
    per = [subscribers // clients + (1 if i < subscribers % clients else 0) for i in range(clients)]
    for n in per:
        args = ["-m", "bench.sse_client", "--port", str(server.port), "--path", path, "--n", str(n)]
        if auth:
            args += ["--auth", auth]
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
        )
    return procs


async def measure(kind: str, p: SseParams, log_dir: Path, *, many: bool = False) -> dict[str, Any]:
    """One server, `p.subscribers` feeds (or, with `many`, `p.many` feeds for `p.many_seconds`)."""
    subscribers = p.many if many else p.subscribers
    clients = max(p.clients, p.many_clients, -(-p.many // 2500)) if many else p.clients
    seconds = p.many_seconds if many else p.seconds
    async with running(kind, log_dir) as server:
        producer = Producer(server)
        await producer.setup()
        procs = await _spawn_clients(server, subscribers, clients)
        try:
            t_connect = time.perf_counter()
            ready = 0
            errors = 0
            for proc in procs:
                assert proc.stdout is not None
                async with asyncio.timeout(120):
                    line = await proc.stdout.readline()
                info = json.loads(line)
                ready += info["ready"]
                errors += info["errors"]
            connect_s = time.perf_counter() - t_connect
            rss_connected = server.rss_kb()
            await asyncio.sleep(0.5)
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            sent = await producer.run(p.rate, seconds)
            produce_s = time.perf_counter() - t0
            await asyncio.sleep(p.drain_s)  # let the last deliveries land
            cpu = server.cpu_seconds() - cpu0
            cpu_wall = time.perf_counter() - t0
            latencies: list[float] = []
            lost = 0
            client_cores = []
            per_event: dict[float, list[float]] = {}
            for proc in procs:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                async with asyncio.timeout(60):
                    out = json.loads(await proc.stdout.readline())
                latencies.extend(out["latencies_ms"])
                lost += out["lost"]
                client_cores.append(out["cpu_cores"])
                for ts, n, first, last in out["per_event"]:
                    ev = per_event.setdefault(ts, [0, first, last])
                    ev[0] += n
                    ev[1], ev[2] = min(ev[1], first), max(ev[2], last)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    try:
                        async with asyncio.timeout(10):
                            await proc.wait()
                    except TimeoutError:
                        proc.kill()
            await producer.close()
    expected = sent * ready
    return {
        "subscribers": ready,
        "subscribers_wanted": subscribers,
        "connect_errors": errors,
        "connect_s": connect_s,
        "rss_connected_kb": rss_connected,
        "events_sent": sent,
        "producer_errors": producer.errors,
        "deliveries": len(latencies),
        "expected_deliveries": expected,
        "delivered_pct": 100 * len(latencies) / expected if expected else 0.0,
        "deliveries_per_s": len(latencies) / (sent / p.rate),
        "produce_s": produce_s,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "lost_connections": lost,
        "server_cores": cpu / cpu_wall,
        "client_cores": client_cores,
        "background_cores": server.background_cores,
        # per produced event: [send time relative to the first, deliveries, first ms, last ms]
        "per_event": [
            [round(ts - min(per_event), 3), n, round(a, 2), round(b, 2)]
            for ts, (n, a, b) in sorted(per_event.items())
        ],
    }


async def run(p: SseParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    bare = await measure("bare", p, log_dir)
    gw = await measure("gateway", p, log_dir)
    s, r = p.subscribers, p.rate
    rows = [
        Row("sse", f"SSE latency p50, {s} subs x {r:g} ev/s", "ms", gw["p50_ms"], bare["p50_ms"]),
        Row(
            "sse",
            f"SSE latency p99, {s} subs x {r:g} ev/s",
            "ms",
            gw["p99_ms"],
            bare["p99_ms"],
            Target("ratio_max", 1.5),
        ),
        Row("sse", "SSE deliveries/s", "1/s", gw["deliveries_per_s"], bare["deliveries_per_s"]),
        Row(
            "sse",
            "SSE delivered of expected",
            "%",
            gw["delivered_pct"],
            bare["delivered_pct"],
            Target("abs_min", 99.9),
        ),
        Row("sse", "server CPU during SSE fan-out", "cores", gw["server_cores"], bare["server_cores"]),
    ]
    details: dict[str, Any] = {"params": p.__dict__, "gateway": gw, "bare": bare}
    if p.many:
        bare_many = await measure("bare", p, log_dir, many=True)
        gw_many = await measure("gateway", p, log_dir, many=True)
        n = p.many
        rows += [
            Row(
                "sse",
                f"SSE subscribers connected, {n} wanted",
                "subscribers",
                gw_many["subscribers"],
                bare_many["subscribers"],
                Target("abs_min", n),
            ),
            Row(
                "sse",
                f"SSE connect errors, {n} subscribers",
                "errors",
                gw_many["connect_errors"] + n - gw_many["subscribers"],
                bare_many["connect_errors"] + n - bare_many["subscribers"],
                Target("abs_max", 0),
            ),
            Row(
                "sse",
                f"SSE time to connect {n} subscribers",
                "s",
                gw_many["connect_s"],
                bare_many["connect_s"],
            ),
            Row(
                "sse",
                f"SSE delivered of expected, {n} subs x {r:g} ev/s",
                "%",
                gw_many["delivered_pct"],
                bare_many["delivered_pct"],
                Target("abs_min", 99.9),
            ),
            Row(
                "sse", f"SSE latency p99, {n} subs x {r:g} ev/s", "ms", gw_many["p99_ms"], bare_many["p99_ms"]
            ),
        ]
        details["gateway_many"] = gw_many
        details["bare_many"] = bare_many
    return rows, details
