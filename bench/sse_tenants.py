"""SSE fan-out with tenants: S subscribers over T tenants, scoped by key vs unscoped.

The gateway serves T echo agents `t0…`, each of its own tenant, with one tenant key
each (`bench.serve_gateway --tenants T`). S subscribers are spread evenly over the
tenants; the producer POSTs `bench-ts:` messages round-robin over the T agents at R/s
(one session per agent, admin key), so each subscriber gets R/T events a second.

- scoped: each subscriber reads `GET /v1/events?types=user.message` with its tenant's
  key: the key's scope alone keeps the other tenants' events out.
- unscoped (the "bare" column): the same subscribers read
  `GET /v1/events?types=user.message&agents=t<i>` with the admin key: the same
  deliveries, filtered by the query instead of by a scope.

Both runs deliver the same frames to the same number of sockets, so the ratio is the
cost of scoping (target: within 10 %, issue 12).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_KEY, ROOT, ServerProc, percentile, running
from bench.report import Row, Target
from bench.serve_gateway import tenant_key


@dataclass
class TenantSseParams:
    subscribers: int = 1000
    tenants: int = 100
    rate: float = 10.0
    seconds: float = 10.0
    drain_s: float = 1.0


async def _produce(server: ServerProc, p: TenantSseParams) -> tuple[int, int]:
    errors = 0
    async with httpx.AsyncClient(
        base_url=server.url,
        timeout=30,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        limits=httpx.Limits(max_connections=64),
    ) as client:
        sessions = []
        for i in range(p.tenants):
            r = await client.post(f"/v1/agents/t{i}/messages", json={"text": "bench producer"})
            r.raise_for_status()
            sessions.append(r.json()["sessionId"])

        async def send(i: int) -> None:
            nonlocal errors
            t = i % p.tenants
            body = {"text": f"bench-ts:{time.time():.6f}", "sessionId": sessions[t]}
            try:
                r = await client.post(f"/v1/agents/t{t}/messages", json=body)
                errors += r.status_code >= 300
            except httpx.HTTPError:
                errors += 1

        count = int(p.rate * p.seconds)
        t0 = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = t0 + i / p.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i)))
        await asyncio.gather(*tasks)
    return count, errors


async def measure(scoped: bool, p: TenantSseParams, log_dir: Path) -> dict[str, Any]:
    plan = []
    for n in range(p.subscribers):
        t = n % p.tenants
        if scoped:
            plan.append(["/v1/events?types=user.message", tenant_key(t)])
        else:
            plan.append([f"/v1/events?types=user.message&agents=t{t}", ADMIN_KEY])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
        plan_file = f.name
    async with running("gateway", log_dir, args=["--tenants", str(p.tenants)]) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sse_client",
            "--port",
            str(server.port),
            "--plan",
            plan_file,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(120):
                info = json.loads(await proc.stdout.readline())
            await asyncio.sleep(0.5)
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            sent, producer_errors = await _produce(server, p)
            await asyncio.sleep(p.drain_s)
            cpu = server.cpu_seconds() - cpu0
            wall = time.perf_counter() - t0
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            async with asyncio.timeout(60):
                out = json.loads(await proc.stdout.readline())
        finally:
            if proc.returncode is None:
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
    await asyncio.to_thread(Path(plan_file).unlink, missing_ok=True)
    latencies = out["latencies_ms"]
    expected = sent * info["ready"] / p.tenants
    return {
        "subscribers": info["ready"],
        "connect_errors": info["errors"],
        "events_sent": sent,
        "producer_errors": producer_errors,
        "deliveries": len(latencies),
        "expected_deliveries": expected,
        "delivered_pct": 100 * len(latencies) / expected if expected else 0.0,
        "foreign_frames": out["other_frames"],
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "server_cores": cpu / wall,
        "background_cores": server.background_cores,
    }


async def run(p: TenantSseParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    unscoped = await measure(False, p, log_dir)
    scoped = await measure(True, p, log_dir)
    s, t, r = p.subscribers, p.tenants, p.rate
    label = f"{s} subs over {t} tenants x {r:g} ev/s; bare column = admin key + agents filter"
    rows = [
        Row("sse-tenants", f"SSE p50, tenant keys ({label})", "ms", scoped["p50_ms"], unscoped["p50_ms"]),
        Row(
            "sse-tenants",
            "SSE p99, tenant keys vs unscoped",
            "ms",
            scoped["p99_ms"],
            unscoped["p99_ms"],
            Target("ratio_max", 1.1),
        ),
        Row(
            "sse-tenants",
            "SSE delivered of expected, tenant keys",
            "%",
            scoped["delivered_pct"],
            unscoped["delivered_pct"],
            Target("abs_min", 99.9),
        ),
        Row(
            "sse-tenants",
            "server CPU, tenant keys vs unscoped",
            "cores",
            scoped["server_cores"],
            unscoped["server_cores"],
            Target("ratio_max", 1.1),
        ),
    ]
    return rows, {"params": p.__dict__, "scoped": scoped, "unscoped": unscoped}
