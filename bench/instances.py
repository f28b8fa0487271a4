"""`python -m bench.instances --pg-url URL --redis-url URL`: what a second instance costs.

Two runs on PostgreSQL, each with fresh `gateway serve` processes:

- one instance, in-process bus (`memory://`): the baseline;
- two instances sharing Redis (`redis://`).

In each, chats on instance A send messages at a steady pace; an SSE feed on A (and,
with two instances, one on B) records when each `user.message` arrives. Printed per
run: chat TTFT (message sent → first token on the socket) and feed latency (message
sent → its `user.message` on the feed), p50 and p99, so the cross-instance hop is the
difference between the feed on B and the feed on A (or the baseline), measured in the
same run under the same load. The background load of the machine is printed too.

THE DATABASE AT --pg-url IS WIPED (its `public` schema is dropped): give a scratch one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import ADMIN_KEY, WA_ENV, WA_PNID, LoadMonitor, cpu_seconds, free_port, percentile, running
from bench.webhook import WebhookParams, backlog_at, drain, end_to_end, graph_stats, load

ROOT = Path(__file__).resolve().parents[1]


def config(path: Path, pg_url: str, bus_url: str, graph_url: str | None = None) -> Path:
    text = f"""[server]
database_url = "{pg_url}"
bus_url = "{bus_url}"
log_json = true
token_flush_ms = 10

[agents.demo]
answer = "echo"
echo_delay_ms = 0
"""
    if graph_url:  # the throughput run: a WhatsApp number on the fake Graph API
        text += f"""
[agents.wa]
answer = "echo"
echo_delay_ms = 0

[[agents.wa.whatsapp]]
phone_number_id = "{WA_PNID}"
access_token_env = "WA_TOKEN"
app_secret_env = "WA_APP_SECRET"
verify_token = "v"
graph_base_url = "{graph_url}"
graph_version = "v21.0"
"""
    path.write_text(text)
    return path


class Proc:
    """A gateway process, for `bench.webhook.load`'s CPU measurement."""

    def __init__(self, kind: str, pid: int) -> None:
        self.kind, self.pid = kind, pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


def spawn(
    cfg: Path, port: int, log_path: Path, env: dict[str, str], extra: list[str]
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway.cli", "--config", str(cfg), "serve", "--port", str(port), *extra]
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def gateways(
    tmp: Path,
    pg_url: str,
    bus_url: str,
    n: int,
    graph_url: str | None = None,
    procs: list[Proc] | None = None,
) -> AsyncIterator[list[str]]:
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    cfg = config(tmp / f"gateway-{n}.toml", pg_url, bus_url, graph_url)
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, **WA_ENV}
    running: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(n):
            port = free_port()
            extra = ["--migrate"] if i == 0 else []
            running.append(spawn(cfg, port, tmp / f"gateway-{n}-{i}.log", env, extra))
            if procs is not None:
                procs.append(Proc(f"gateway-{i}", running[-1].pid))
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as c, asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await c.get(f"{url}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            urls.append(url)
        yield urls
    finally:
        for p in running:
            p.terminate()
        for p in running:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


async def feed(url: str, arrivals: dict[str, float], ready: asyncio.Event) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        httpx.AsyncClient(timeout=None) as c,
        c.stream("GET", f"{url}/v1/events", headers=headers) as r,
    ):
        ready.set()
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "user.message":
                arrivals.setdefault(json.loads(line[6:])["text"], time.monotonic())


async def chat(
    url: str, name: str, messages: int, gap: float, sent: dict[str, float], ttft: list[float]
) -> None:
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {ADMIN_KEY}"}) as c:
        token = (await c.post(f"{url}/v1/tokens", json={"agent": "demo", "channel": "chat"})).json()["token"]
    ws_url = url.replace("http://", "ws://")
    async with websockets.connect(f"{ws_url}/chat/ws?token={token}") as ws:
        await ws.recv()
        for i in range(messages):
            body = f"{name}-{i} hello there"
            t0 = time.monotonic()
            sent[body] = t0
            await ws.send(json.dumps({"event": "message", "text": body}))
            first = None
            while True:
                frame = json.loads(await ws.recv())
                if frame["event"] == "chat.token" and first is None:
                    first = time.monotonic()
                    ttft.append((first - t0) * 1000)
                if frame["event"] == "chat.done":
                    break
            await asyncio.sleep(gap)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms (n={len(values)})"


async def run(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    bus = "memory://" if n == 1 else f"{args.redis_url}?channel=bench-{uuid.uuid4().hex}"
    async with gateways(tmp, args.pg_url, bus, n) as urls:
        arrivals = [dict[str, float]() for _ in urls]
        readies = [asyncio.Event() for _ in urls]
        feeds = [asyncio.create_task(feed(u, a, r)) for u, a, r in zip(urls, arrivals, readies, strict=True)]
        for r in readies:
            await r.wait()
        await asyncio.sleep(0.5)
        sent: dict[str, float] = {}
        ttft: list[float] = []
        monitor = LoadMonitor()
        monitor.start()
        await asyncio.gather(
            *(chat(urls[0], f"c{i}", args.messages, args.gap, sent, ttft) for i in range(args.chats))
        )
        await asyncio.sleep(2.0)  # stragglers (the store catch-up is every second)
        background = monitor.stop()
        for f in feeds:
            f.cancel()
        await asyncio.gather(*feeds, return_exceptions=True)
    result: dict[str, Any] = {"instances": n, "ttft": ttft, "background_cores": background}
    for i, got in enumerate(arrivals):
        result[f"feed_{'AB'[i]}"] = [(got[k] - t) * 1000 for k, t in sent.items() if k in got]
        result[f"missing_{'AB'[i]}"] = sum(1 for k in sent if k not in got)
    return result


async def throughput(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Signed WhatsApp webhooks at c=C spread over the instances, answered end to end.

    Both runs share Redis (the issue's comparison: PostgreSQL + Redis, one instance or
    two), so the difference is the second instance, not the shared bus and leases."""
    bus = f"{args.redis_url}?channel=bench-{uuid.uuid4().hex}"
    p = WebhookParams(seconds=args.seconds, concurrency=args.concurrency)
    async with running("fake_graph", tmp) as graph:
        procs: list[Proc] = []
        async with gateways(tmp, args.pg_url, bus, n, graph.url, procs) as urls:
            ports = [int(u.rsplit(":", 1)[1]) for u in urls]
            before = await backlog_at(args.pg_url)
            sends0 = (await graph_stats(graph)).get("sends", 0)
            good = await load(
                [*procs, graph],
                "/whatsapp/webhook",
                p,
                concurrency=p.concurrency,
                seconds=p.seconds,
                ports=ports,
            )
            drained = await drain(args.pg_url, p.drain_timeout_s)
            sends = (await graph_stats(graph)).get("sends", 0) - sends0
    e2e = end_to_end(good, before, drained, sends)
    cores = sum(v for k, v in good["cores"].items() if k.startswith("gateway"))
    return {
        "instances": n,
        "req_per_s": good["req_per_s"],
        "p50_ms": good["p50_ms"],
        "p99_ms": good["p99_ms"],
        "drain_s": drained["drain_s"],
        "e2e_per_s": e2e["per_s"],
        "all_answered": e2e["all_answered"],
        "gateway_cores": cores,
        "background_cores": good["background_cores"],
    }


def report(results: list[list[dict[str, Any]]], args: argparse.Namespace) -> None:
    keys = ("req_per_s", "p99_ms", "drain_s", "e2e_per_s", "gateway_cores")
    medians = [{k: _median([r[k] for r in rs]) for k in keys} for rs in results]
    c, secs = args.concurrency, args.seconds
    print(f"PostgreSQL + Redis: signed webhooks, c={c} for {secs:.0f} s, medians of {args.repeat}")
    for n, (rs, med) in enumerate(zip(results, medians, strict=True), start=1):
        label = "1 instance" if n == 1 else "2 instances"
        answered = all(r["all_answered"] for r in rs)
        background = max(r["background_cores"] for r in rs)
        print(
            f"  {label}: {med['req_per_s']:.0f} req/s, p99 {med['p99_ms']:.0f} ms, "
            f"drain {med['drain_s']:.1f} s, end to end {med['e2e_per_s']:.0f} msg/s, "
            f"every message answered: {answered}, gateway cores {med['gateway_cores']:.2f}, "
            f"background {background:.2f}"
        )
    one, two = medians
    print(
        f"  2 instances / 1: req/s {two['req_per_s'] / one['req_per_s']:.2f}x, "
        f"end to end {two['e2e_per_s'] / one['e2e_per_s']:.2f}x (target >= 0.9x)"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-instances-") as d:
        tmp = Path(d)
        if args.throughput:
            results: list[list[dict[str, Any]]] = [[], []]
            for _ in range(args.repeat):
                for n in (1, 2):  # alternating, so a drift of the machine hits both alike
                    results[n - 1].append(await throughput(n, args, tmp))
            report(results, args)
            if args.throughput_only:
                return
        for n in (1, 2):
            r = await run(n, args, tmp)
            label = "1 instance, memory bus" if n == 1 else "2 instances, Redis bus"
            print(f"{label} (background load {r['background_cores']:.2f} cores)")
            print(f"  chat TTFT on A:          {summary(r['ttft'])}")
            print(f"  feed on A (same):        {summary(r['feed_A'])}, missing {r['missing_A']}")
            if n == 2:
                print(f"  feed on B (other):       {summary(r['feed_B'])}, missing {r['missing_B']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", required=True, help="a SCRATCH PostgreSQL database (it is wiped)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--chats", type=int, default=4)
    p.add_argument("--messages", type=int, default=50, help="per chat")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between a reply and the next message")
    p.add_argument("--throughput", action="store_true", help="also: webhooks at c=C, 1 vs 2 instances")
    p.add_argument("--throughput-only", action="store_true", help="only the throughput runs")
    p.add_argument("--concurrency", type=int, default=64, help="throughput: connections (C)")
    p.add_argument("--seconds", type=float, default=10.0, help="throughput: load window")
    p.add_argument("--repeat", type=int, default=3, help="throughput: runs of each (medians)")
    args = p.parse_args()
    args.throughput = args.throughput or args.throughput_only
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
