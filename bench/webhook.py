"""Signed WhatsApp webhooks: sustained ingestion, gateway vs bare baselines.

Every request is a realistic text-message webhook of ~1.5 KB (compact JSON as Meta
sends it: `whatsapp_business_account`, one entry, one change with metadata,
contacts and one `text` message), with a wamid unique to the request and a sender
drawn round-robin from a pool of contacts, signed
`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body with the app secret>`.
Closed loop on C keep-alive raw-socket connections; after a warm-up, every response
that arrives in the window counts (req/s = those / window), latency = request written
→ whole response read.

- gateway (`bench.serve_gateway --graph-url`): agent `wa` (echo, zero delay) owns the
  number. A 200 means the message is stored (one transaction per delivery); then
  its turn runs and the echo reply goes through the outbox to a fake Graph API
  (`bench.serve_fake_graph`, own process), preceded by a mark-read/typing call. That
  work shares the CPU with ingestion, so after the window the benchmark waits for
  the backlog (pending user messages, unsent outbox rows, read from the gateway's
  database) to drain and reports how long that took. End to end: every message
  accepted during the load (warm-up included) must have had its echo reply accepted
  by the fake Graph API; the rate is accepted ÷ (load + drain), from the first
  request to the moment nothing is pending or unsent.
- PostgreSQL (when `bench.pg` reaches a server): the gateway and the group-commit
  baseline again, each on a scratch database created for the measurement and dropped
  after it; SQLite stays the first and default set of rows.
- bare "verify + parse" (`POST /whatsapp/webhook` of `bench.serve_bare`): HMAC check
  and `json.loads`, nothing stored.
- bare "group commit" (`POST /whatsapp/webhook-gc`): verify, parse, then one writer
  task commits what queued up (≤ 64 rows per SQLAlchemy Core transaction) and each
  request is answered after its own commit — the baseline PERFORMANCE.md sets the
  ingest target against (≥ 0.6x its req/s, p99 ≤ 2x).
- bad signature: the same bodies signed with another secret, expecting 401; compared
  with bare verify + parse of good bodies (target ≥ 0.75x).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pg
from bench.clients import HttpConn
from bench.common import (
    HOST,
    WA_APP_SECRET,
    WA_ENV,
    WA_PNID,
    LoadMonitor,
    ServerProc,
    percentile,
    running,
    wait_for_quiet,
)
from bench.report import Row, Target

TEXT = (
    "Hi! I ordered the blue running shoes (size 42) last Tuesday, order number "
    "A-{n:08d}, and the tracking page still says the parcel is waiting at the "
    "warehouse. Could you tell me when it will ship, and whether I can still change "
    "the delivery address to my office? "
)


_SERIAL = itertools.count()  # wamids stay unique across every load of a run


@dataclass
class WebhookParams:
    seconds: float = 10.0  # c=C window for the signed bodies
    concurrency: int = 64
    c1_seconds: float = 3.0
    bad_seconds: float = 5.0
    warmup_s: float = 1.0
    contacts: int = 1000
    body_bytes: int = 1500
    drain_timeout_s: float = 60.0


class Bodies:
    """Raw HTTP requests: a fresh wamid per body, senders round-robin over a pool."""

    def __init__(self, path: str, port: int, p: WebhookParams, *, bad: bool = False) -> None:
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: facebookexternalua\r\n"
            "Accept: */*\r\nContent-Type: application/json\r\n"
        ).encode()
        self.secret = (WA_APP_SECRET if not bad else "not-the-app-secret").encode()
        self.contacts = p.contacts
        base = json.dumps(self._payload("0" * 11, "X" * 58, 0), separators=(",", ":"))
        self.text = (TEXT * 8)[: max(20, p.body_bytes - len(base))]
        self.template = json.dumps(
            self._payload("%(from)s", "%(wamid)s", "%(ts)s", "%(text)s", "%(name)s"), separators=(",", ":")
        )

    @staticmethod
    def _payload(
        sender: str, wamid: str, ts: Any, text: str = "", name: str = "Bench Contact"
    ) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": WA_PNID,
                                },
                                "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                                "messages": [
                                    {
                                        "from": sender,
                                        "id": wamid,
                                        "timestamp": str(ts),
                                        "type": "text",
                                        "text": {"body": text},
                                    }
                                ],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }

    def body(self) -> bytes:
        n = next(_SERIAL)
        contact = n % self.contacts
        return (
            self.template
            % {
                "from": f"1650555{contact:04d}",
                "wamid": f"wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ{n:026d}QA1=",
                "ts": str(int(time.time())),
                "text": self.text.replace("{n:08d}", f"{n:08d}"),
                "name": f"Bench Contact {contact:04d}",
            }
        ).encode()

    def request(self) -> bytes:
        body = self.body()
        sig = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        return (
            self.head
            + f"X-Hub-Signature-256: sha256={sig}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def load(
    servers: list[ServerProc],
    path: str,
    p: WebhookParams,
    *,
    concurrency: int,
    seconds: float,
    bad: bool = False,
    ports: list[int] | None = None,
) -> dict[str, Any]:
    """C closed-loop connections; counts the responses that arrive within the window.

    The connections go to the first server, or round-robin to `ports` (several gateway
    instances); `servers` are the processes whose CPU is measured."""
    await wait_for_quiet()
    targets = ports or [servers[0].port]
    bodies = Bodies(path, targets[0], p, bad=bad)
    monitor = LoadMonitor()
    conns = [await HttpConn.connect(targets[i % len(targets)]) for i in range(concurrency)]
    want = 401 if bad else 200
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    accepted = 0  # every response with the expected status, warm-up and window alike
    sent = 0
    t_begin = time.perf_counter()
    t_start = time.perf_counter() + p.warmup_s
    t_end = t_start + seconds
    cpu: dict[str, float] = {}
    client0 = 0.0

    async def window_cpu() -> None:
        nonlocal client0
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        c0 = {s.kind: s.cpu_seconds() for s in servers}
        client0 = _client_cpu()
        monitor.start()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        monitor.stop()
        for s in servers:
            cpu[s.kind] = (s.cpu_seconds() - c0[s.kind]) / seconds
        cpu["client"] = (_client_cpu() - client0) / seconds

    async def worker(conn: HttpConn) -> None:
        nonlocal sent, accepted
        while True:
            raw = bodies.request()
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            sent += 1
            status, _ = await conn.request(raw)
            t1 = time.perf_counter()
            accepted += status == want
            if t_start <= t1 < t_end:
                statuses[status] += 1
                if status == want:
                    latencies.append((t1 - t0) * 1000)

    meter = asyncio.create_task(window_cpu())
    try:
        async with asyncio.timeout(p.warmup_s + seconds + 120):  # one deadline, not one per request
            await asyncio.gather(*(worker(c) for c in conns))
            await meter
    finally:
        for c in conns:
            c.close()
    ok = statuses[want]
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_sent": sent,
        "accepted_total": accepted,
        "t_begin": t_begin,  # perf_counter when the first request could go
        "t_done": time.perf_counter(),  # the last response read
        "in_window": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wrong_status": sum(statuses.values()) - ok,
        "req_per_s": ok / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "cores": cpu,
        "background_cores": monitor.background_cores,  # other processes, during the window
    }


async def backlog(engine: Any) -> dict[str, int]:
    """Pending user messages and outbox rows by status, read from the gateway's database."""
    from sqlalchemy import text

    async with engine.connect() as con:
        pending = (await con.execute(text("SELECT count(*) FROM messages WHERE pending"))).scalar_one()
        users = (await con.execute(text("SELECT count(*) FROM messages WHERE role = 'user'"))).scalar_one()
        outbox = dict(
            (await con.execute(text("SELECT status, count(*) FROM outbox GROUP BY status"))).tuples().all()
        )
    return {
        "user_messages": int(users),
        "pending_messages": int(pending),
        "outbox_unsent": int(sum(v for k, v in outbox.items() if k not in ("sent", "failed"))),
        "outbox_sent": int(outbox.get("sent", 0)),
        "outbox_failed": int(outbox.get("failed", 0)),
    }


async def graph_stats(graph: ServerProc) -> dict[str, int]:
    conn = await HttpConn.connect(graph.port)
    try:
        status, body = await asyncio.wait_for(
            conn.request(f"GET /stats HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()), 10
        )
        return json.loads(body) if status == 200 else {}
    finally:
        conn.close()


async def drain(url: str, timeout: float) -> dict[str, Any]:
    """Wait for the turns and the outbox to catch up after the load stopped."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        url, **({"connect_args": {"timeout": 5}} if url.startswith("sqlite") else {})
    )
    try:
        t0 = time.perf_counter()
        at_end = await backlog(engine)
        now = at_end
        while now["pending_messages"] or now["outbox_unsent"]:
            if time.perf_counter() - t0 > timeout:
                break
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):  # a locked SQLite file: read again
                now = await backlog(engine)
        t_done = time.perf_counter()
    finally:
        await engine.dispose()
    drained = not (now["pending_messages"] or now["outbox_unsent"])
    return {
        "at_window_end": at_end,
        "after": now,
        "drained": drained,
        "drain_s": t_done - t0 if drained else float("nan"),
        "t_done": t_done,
    }


def end_to_end(
    load_result: dict[str, Any], before: dict[str, int], drained: dict[str, Any], sends: int
) -> dict[str, Any]:
    """Accepted messages answered per second, counting the load and the drain after it.

    Every accepted message must be answered: stored (the 200 says so) and no longer
    pending, and every reply part the gateway queued for them must have been accepted by
    the fake Graph API. One turn answers all of a contact's messages that are pending when
    it starts, so under load a reply often answers several messages: the check counts
    messages answered, not replies (`sends`: the fake's send count over the phase, which
    must cover every part the gateway recorded as sent; none may have failed).
    """
    accepted = load_result["accepted_total"]
    after = drained["after"]
    stored = after["user_messages"] - before["user_messages"]
    answered = stored - after["pending_messages"]
    parts = after["outbox_sent"] - before["outbox_sent"]
    span = drained["t_done"] - load_result["t_begin"]
    answered_all = (
        bool(drained["drained"])
        and answered >= accepted
        and after["outbox_failed"] == before["outbox_failed"]
        and sends >= parts
    )
    return {
        "accepted": accepted,
        "answered": min(answered, accepted),
        "replies_sent": parts,
        "span_s": span,
        "all_answered": answered_all,
        "per_s": accepted / span if answered_all and span > 0 else float("nan"),
    }


async def backlog_at(url: str) -> dict[str, int]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        return await backlog(engine)
    finally:
        await engine.dispose()


async def measure_bare(p: WebhookParams, log_dir: Path) -> dict[str, Any]:
    async with running("bare", log_dir) as bare:
        out = {
            "parse_c": await load(
                [bare], "/whatsapp/webhook", p, concurrency=p.concurrency, seconds=p.seconds
            ),
            "parse_c1": await load([bare], "/whatsapp/webhook", p, concurrency=1, seconds=p.c1_seconds),
            "parse_bad": await load(
                [bare], "/whatsapp/webhook", p, concurrency=p.concurrency, seconds=p.bad_seconds, bad=True
            ),
            "gc_c": await load(
                [bare], "/whatsapp/webhook-gc", p, concurrency=p.concurrency, seconds=p.seconds
            ),
            "gc_c1": await load([bare], "/whatsapp/webhook-gc", p, concurrency=1, seconds=p.c1_seconds),
        }
    out["background_cores"] = bare.background_cores
    return out


async def measure_bare_pg(p: WebhookParams, log_dir: Path) -> dict[str, Any]:
    """The group-commit baseline committing to a scratch PostgreSQL database."""
    async with pg.scratch_database() as url, running("bare", log_dir, args=["--database-url", url]) as bare:
        out = {
            "gc_c": await load(
                [bare], "/whatsapp/webhook-gc", p, concurrency=p.concurrency, seconds=p.seconds
            ),
            "gc_c1": await load([bare], "/whatsapp/webhook-gc", p, concurrency=1, seconds=p.c1_seconds),
        }
    out["background_cores"] = bare.background_cores
    return out


async def measure_gateway(p: WebhookParams, log_dir: Path, database_url: str | None = None) -> dict[str, Any]:
    """The gateway on its SQLite file, or (`database_url`) on PostgreSQL; the bad-signature
    phase only on SQLite (it never reaches the database)."""
    async with running("fake_graph", log_dir) as graph:
        args = ["--graph-url", graph.url]
        if database_url is not None:
            args += ["--database-url", database_url]
        async with running("gateway", log_dir, args=args, env=WA_ENV) as gw:
            assert gw.db_path is not None
            url = database_url or f"sqlite+aiosqlite:///{gw.db_path}"
            servers = [gw, graph]
            before = await graph_stats(graph)
            stored_before = await backlog_at(url)
            good = await load(servers, "/whatsapp/webhook", p, concurrency=p.concurrency, seconds=p.seconds)
            after = await drain(url, p.drain_timeout_s)
            sends = (await graph_stats(graph)).get("sends", 0) - before.get("sends", 0)
            e2e = end_to_end(good, stored_before, after, sends)
            c1 = await load(servers, "/whatsapp/webhook", p, concurrency=1, seconds=p.c1_seconds)
            after_c1 = await drain(url, p.drain_timeout_s)
            bad = None
            if database_url is None:
                bad = await load(
                    servers,
                    "/whatsapp/webhook",
                    p,
                    concurrency=p.concurrency,
                    seconds=p.bad_seconds,
                    bad=True,
                )
            stats = await graph_stats(graph)
        out = {
            "signed_c": good,
            "drain_c": after,
            "end_to_end_c": e2e,
            "signed_c1": c1,
            "drain_c1": after_c1,
            "bad_c": bad,
            "graph": stats,
            "background_cores": gw.background_cores,
        }
    out["graph_background_cores"] = graph.background_cores
    return out


async def measure_gateway_pg(p: WebhookParams, log_dir: Path) -> dict[str, Any]:
    async with pg.scratch_database() as url:
        return await measure_gateway(p, log_dir, url)


def _ingest_rows(c: int, gw: dict[str, Any], gc: dict[str, Any], db: str) -> list[Row]:
    """The rows issue 13's table sets against the group-commit baseline, for one database."""
    g, e2e = gw["signed_c"], gw["end_to_end_c"]
    return [
        Row(
            "webhook",
            f"{db}: webhook req/s, c={c} (bare: group commit)",
            "req/s",
            g["req_per_s"],
            gc["gc_c"]["req_per_s"],
            Target("ratio_min", 0.5),
        ),
        Row(
            "webhook",
            f"{db}: webhook p99, c={c} (bare: group commit)",
            "ms",
            g["p99_ms"],
            gc["gc_c"]["p99_ms"],
            Target("ratio_max", 3),
        ),
        Row(
            "webhook",
            f"{db}: answered end to end, accepted / (load + drain), c={c} (bare: group commit)",
            "msg/s",
            e2e["per_s"],
            gc["gc_c"]["req_per_s"],
            Target("ratio_min", 0.25),
        ),
        Row(
            "webhook",
            f"{db}: accepted messages answered (echo reply reached the fake Graph), c={c}",
            "%",
            100.0 * e2e["answered"] / e2e["accepted"] if e2e["accepted"] else float("nan"),
            None,
            Target("abs_min", 100),
        ),
    ]


async def run(p: WebhookParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    bare = await measure_bare(p, log_dir)
    gw = await measure_gateway(p, log_dir)
    no_pg = await pg.available()
    bare_pg = gw_pg = None
    if no_pg is None:
        bare_pg = await measure_bare_pg(p, log_dir)
        gw_pg = await measure_gateway_pg(p, log_dir)
    else:
        print(f"webhook: PostgreSQL rows skipped ({no_pg})")
    c = p.concurrency
    g, parse, gc = gw["signed_c"], bare["parse_c"], bare["gc_c"]
    rows = [
        Row(
            "webhook",
            f"webhook req/s, c={c} (bare: verify+parse)",
            "req/s",
            g["req_per_s"],
            parse["req_per_s"],
        ),
        Row(
            "webhook",
            f"webhook req/s, c={c} (bare: group commit)",
            "req/s",
            g["req_per_s"],
            gc["req_per_s"],
            Target("ratio_min", 0.6),
        ),
        Row("webhook", f"webhook p99, c={c} (bare: verify+parse)", "ms", g["p99_ms"], parse["p99_ms"]),
        Row(
            "webhook",
            f"webhook p99, c={c} (bare: group commit)",
            "ms",
            g["p99_ms"],
            gc["p99_ms"],
            Target("ratio_max", 2),
        ),
        Row(
            "webhook",
            "webhook p50, c=1 (bare: verify+parse)",
            "ms",
            gw["signed_c1"]["p50_ms"],
            bare["parse_c1"]["p50_ms"],
            Target("abs_max", 2.5),
        ),
        Row(
            "webhook",
            "webhook p50, c=1 (bare: verify+parse, issue 13's target)",
            "ms",
            gw["signed_c1"]["p50_ms"],
            bare["parse_c1"]["p50_ms"],
            Target("ratio_max", 10),
        ),
        Row(
            "webhook",
            f"bad-signature rejections/s, c={c} (bare: verify+parse)",
            "req/s",
            gw["bad_c"]["req_per_s"],
            parse["req_per_s"],
            Target("ratio_min", 0.75),
        ),
        Row(
            "webhook",
            f"server CPU, signed c={c} (bare: verify+parse)",
            "cores",
            g["cores"].get("gateway", float("nan")),
            parse["cores"].get("bare", float("nan")),
        ),
        Row(
            "webhook",
            f"turn + outbox backlog drained after c={c} window",
            "s",
            gw["drain_c"]["drain_s"],
            None,
        ),
        *_ingest_rows(c, gw, bare, "SQLite"),
    ]
    if gw_pg is not None and bare_pg is not None:
        rows += [
            *_ingest_rows(c, gw_pg, bare_pg, "PostgreSQL"),
            Row(
                "webhook",
                "PostgreSQL: webhook p50, c=1 (bare: verify+parse)",
                "ms",
                gw_pg["signed_c1"]["p50_ms"],
                bare["parse_c1"]["p50_ms"],
                Target("ratio_max", 10),
            ),
            Row(
                "webhook",
                f"PostgreSQL: turn + outbox backlog drained after c={c} window",
                "s",
                gw_pg["drain_c"]["drain_s"],
                None,
            ),
        ]
    return rows, {
        "params": p.__dict__,
        "gateway": gw,
        "bare": bare,
        "gateway_pg": gw_pg,
        "bare_pg": bare_pg,
        "postgres_skipped": no_pg,
    }
