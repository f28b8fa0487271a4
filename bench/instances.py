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

from bench.common import ADMIN_KEY, LoadMonitor, free_port, percentile

ROOT = Path(__file__).resolve().parents[1]


def config(path: Path, pg_url: str, bus_url: str) -> Path:
    path.write_text(
        f"""[server]
database_url = "{pg_url}"
bus_url = "{bus_url}"
log_json = true
token_flush_ms = 10

[agents.demo]
answer = "echo"
echo_delay_ms = 0
"""
    )
    return path


def spawn(
    cfg: Path, port: int, log_path: Path, env: dict[str, str], extra: list[str]
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway.cli", "--config", str(cfg), "serve", "--port", str(port), *extra]
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def gateways(tmp: Path, pg_url: str, bus_url: str, n: int) -> AsyncIterator[list[str]]:
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    cfg = config(tmp / f"gateway-{n}.toml", pg_url, bus_url)
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(n):
            port = free_port()
            extra = ["--migrate"] if i == 0 else []
            procs.append(spawn(cfg, port, tmp / f"gateway-{n}-{i}.log", env, extra))
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
        for p in procs:
            p.terminate()
        for p in procs:
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


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-instances-") as d:
        tmp = Path(d)
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
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
