"""`python -m bench [--only chat,sse,sse-tenants,memory,llm,webhook,relay] [--quick] [--repeat N]`.

Every benchmark measures the gateway and a baseline in the same run, each server in
its own process (`bench.serve_gateway`, `bench.serve_bare`, and the fake upstreams
`bench.serve_fake_llm`, `bench.serve_fake_graph`), the load generator in this one
(plus `bench.sse_client` processes for SSE). Results: a markdown table on stdout and
`bench/results.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import chat, llm, memory, relay, sse, sse_tenants, webhook
from bench.common import Profiling, Quiet, raise_nofile, run_async
from bench.report import Row, table

BENCHES = ("chat", "sse", "sse-tenants", "memory", "llm", "webhook", "relay")
BUSY_WARNING_CORES = 0.25


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            n: _version(n)
            for n in (
                "uvicorn",
                "uvloop",
                "httptools",
                "websockets",
                "starlette",
                "sse-starlette",
                "httpx",
                "httpcore",
                "sniffio",
                "sqlalchemy",
                "aiosqlite",
            )
        },
    }


def params_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        c = chat.ChatParams(
            words=args.words,
            seq_chats=2,
            seq_messages=3,
            conc_chats=args.chats or 20,
            conc_rounds=2,
            warmup_messages=2,
        )
        s = sse.SseParams(
            subscribers=args.subscribers or 200,
            rate=args.rate,
            seconds=args.seconds or 1,
            clients=args.sse_clients,
            drain_s=0.5,
            many=args.sse_many if args.sse_many is not None else 1000,
            many_seconds=1,
        )
        m = memory.MemoryParams(connections=args.connections or 100, settle_s=0.3)
        lp = llm.LlmParams(
            warmup=2,
            ttft_chats=2,
            ttft_messages=5,
            fast_chats=1,
            fast_messages=2,
            chats=args.llm_chats or 30,
            paced_tokens=50,
            rounds=1,
            stagger_s=0.5,
        )
        w = webhook.WebhookParams(
            seconds=args.webhook_seconds or 2,
            concurrency=args.webhook_concurrency,
            c1_seconds=1,
            bad_seconds=1,
            warmup_s=0.5,
        )
        r = relay.RelayParams(calls=2, prompts=10, conc_prompts=3, direct_turns=200, direct_warmup=20)
        st = sse_tenants.TenantSseParams(
            subscribers=args.subscribers or 200,
            tenants=20,
            rate=args.rate,
            seconds=args.seconds or 1,
            drain_s=0.5,
        )
    else:
        c = chat.ChatParams(words=args.words, conc_chats=args.chats or 20)
        s = sse.SseParams(
            subscribers=args.subscribers or 1000,
            rate=args.rate,
            seconds=args.seconds or 10,
            clients=args.sse_clients,
            many=args.sse_many if args.sse_many is not None else 10_000,
        )
        m = memory.MemoryParams(connections=args.connections or 500)
        lp = llm.LlmParams(chats=args.llm_chats or 150)
        w = webhook.WebhookParams(seconds=args.webhook_seconds or 10, concurrency=args.webhook_concurrency)
        r = relay.RelayParams()
        st = sse_tenants.TenantSseParams(
            subscribers=args.subscribers or 1000, rate=args.rate, seconds=args.seconds or 10
        )
    return {"chat": c, "sse": s, "sse-tenants": st, "memory": m, "llm": lp, "webhook": w, "relay": r}


def median_rows(runs: list[list[Row]]) -> list[Row]:
    if len(runs) == 1:
        return runs[0]
    out = []
    for same in zip(*runs, strict=True):
        first = same[0]
        bares = [r.bare for r in same if r.bare is not None and math.isfinite(r.bare)]
        out.append(
            Row(
                first.bench,
                first.metric + f" [median of {len(same)}]",
                first.unit,
                statistics.median(r.gateway for r in same),
                statistics.median(bares) if bares else None,
                first.target,
            )
        )
    return out


def background(details: Any) -> list[float]:
    """Every `background_cores` reading found in a details tree."""
    found: list[float] = []
    if isinstance(details, dict):
        for k, v in details.items():
            if k == "background_cores" and isinstance(v, float):
                found.append(v)
            else:
                found.extend(background(v))
    elif isinstance(details, list):
        for v in details:
            found.extend(background(v))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(BENCHES), help=f"comma-separated subset of: {','.join(BENCHES)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small counts, a few seconds per bench"
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each benchmark N times, report medians")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--words", type=int, default=200, help="chat: words (= tokens) per message")
    parser.add_argument("--chats", type=int, default=0, help="chat: concurrent chats (default 20)")
    parser.add_argument(
        "--subscribers", type=int, default=0, help="sse: subscribers (default 1000; quick 200)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="sse: events per second")
    parser.add_argument(
        "--seconds", type=float, default=0, help="sse: production window (default 10; quick 1)"
    )
    parser.add_argument("--sse-clients", type=int, default=1, help="sse: subscriber processes")
    parser.add_argument(
        "--sse-many",
        type=int,
        default=None,
        help="sse: subscribers of the connection row (default 10000; quick 1000; 0 skips it); "
        "held by max(--sse-clients, 4, N/2500) processes",
    )
    parser.add_argument("--connections", type=int, default=0, help="memory: idle connections (default 500)")
    parser.add_argument(
        "--llm-chats", type=int, default=0, help="llm: concurrent paced streams (default 150; quick 30)"
    )
    parser.add_argument(
        "--webhook-seconds", type=float, default=0, help="webhook: window at c=C (default 10; quick 2)"
    )
    parser.add_argument("--webhook-concurrency", type=int, default=64, help="webhook: connections (C)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="attach py-spy to every server; collapsed stacks go to DIR (summarize "
        "with `python -m bench.stacks FILE`); sampling costs CPU: discard those numbers",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each server start, wait up to SECONDS for other processes to use "
        f"< {Quiet.threshold_cores} cores (shared machines)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs (path printed)")
    args = parser.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    raise_nofile()
    if args.profile is not None:
        Profiling.dir, Profiling.exe = args.profile.resolve(), args.py_spy
    Quiet.max_wait_s = args.wait_quiet
    params = params_for(args)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    modules = {
        "chat": chat,
        "sse": sse,
        "sse-tenants": sse_tenants,
        "memory": memory,
        "llm": llm,
        "webhook": webhook,
        "relay": relay,
    }
    rows: list[Row] = []
    details: dict[str, Any] = {}
    started = time.monotonic()
    ok = False
    try:
        for name in BENCHES:
            if name not in only:
                continue
            runs: list[list[Row]] = []
            details[name] = []
            for i in range(args.repeat):
                t0 = time.monotonic()
                Profiling.tag = f"{name}{i + 1}"
                print(f"[bench] {name} run {i + 1}/{args.repeat} …", file=sys.stderr, flush=True)
                r, d = run_async(modules[name].run(params[name], log_dir))
                runs.append(r)
                details[name].append(d)
                print(f"[bench] {name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
            rows.extend(median_rows(runs))
        ok = True
    finally:
        if args.keep_logs or not ok:
            print(f"[bench] server logs in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    busy = background(details)
    worst = max(busy, default=0.0)
    notes = []
    if worst > BUSY_WARNING_CORES:
        notes.append(
            f"other processes used up to {worst:.2f} cores during a measurement: "
            "numbers are suspect; rerun on a quiet machine"
        )
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "background_cores_max": worst,
        "waited_for_quiet_s": round(Quiet.waited_s, 1),
        "notes": notes,
        "profiled": args.profile is not None,
        "rows": [r.as_json() for r in rows],
        "details": details,
    }
    args.out.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    print()
    print(
        f"Switchboard benchmarks — {result['date']}, {result['mode']}, {os.cpu_count()} cores, "
        f"{result['elapsed_s']}s"
    )
    print()
    print(table(rows))
    print()
    for n in notes:
        print(f"WARNING: {n}")
    print(f"(background load max {worst:.2f} cores; results in {args.out})")
    return 0


def _finite(value: Any) -> Any:
    """NaN/inf → null, so results.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
