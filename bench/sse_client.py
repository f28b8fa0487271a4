"""One SSE load-generator process: `python -m bench.sse_client --port N --path P --n 500`.

Opens N raw-socket subscribers, prints `{"ready": k, "errors": e}` once every
connected subscriber has received its first comment (`: connected`), then records,
for each frame of type `--event` whose data contains `bench-ts:<epoch seconds>`,
the delivery latency (arrival - that timestamp). A line on stdin stops it; it then
prints `{"latencies_ms": [...], ...}` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time

from bench.clients import SseClient
from bench.common import gather_limited, raise_nofile, run_async

TS = re.compile(rb"bench-ts:(\d+\.\d+)")


async def main(args: argparse.Namespace) -> None:
    latencies: list[float] = []
    other = [0]
    ready = [0]
    all_ready = asyncio.Event()
    wanted = b"event: " + args.event.encode()
    target = [args.n]
    per_event: dict[bytes, list[float]] = {}  # timestamp → [deliveries, first ms, last ms]

    def make_on_frame() -> object:
        seen = [False]

        def on_frame(frame: bytes, t_wall: float) -> None:
            if frame.startswith(b":"):
                if not seen[0]:
                    seen[0] = True
                    ready[0] += 1
                    if ready[0] >= target[0]:
                        all_ready.set()
                return
            m = TS.search(frame)
            if m is not None and wanted in frame:
                lat = (t_wall - float(m.group(1))) * 1000
                latencies.append(lat)
                ev = per_event.get(m.group(1))
                if ev is None:
                    per_event[m.group(1)] = [1, lat, lat]
                else:
                    ev[0] += 1
                    ev[1] = min(ev[1], lat)
                    ev[2] = max(ev[2], lat)
            else:
                other[0] += 1

        return on_frame

    headers = {"Authorization": f"Bearer {args.auth}"} if args.auth else {}
    # `--plan FILE`: a JSON list of [path, key], one subscriber each (sse-tenants).
    plan = json.loads(open(args.plan).read()) if args.plan else [[args.path, args.auth]] * args.n
    target[0] = len(plan)
    results = await gather_limited(
        [
            SseClient.connect(
                args.port,
                path,
                make_on_frame(),  # type: ignore[arg-type]
                {"Authorization": f"Bearer {key}"} if key else headers,
            )
            for path, key in plan
        ],
        args.concurrency,
    )
    clients = [r for r in results if isinstance(r, SseClient)]
    errors = [repr(r) for r in results if not isinstance(r, SseClient)]
    target[0] = len(clients)
    if ready[0] >= target[0]:
        all_ready.set()
    try:
        async with asyncio.timeout(60):
            await all_ready.wait()
    except TimeoutError:
        pass
    print(json.dumps({"ready": ready[0], "errors": len(errors), "first_error": errors[:1]}), flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    lost = sum(1 for c in clients if c.closed.done())
    for c in clients:
        c.close()
    out = {
        "latencies_ms": [round(x, 3) for x in latencies],
        "other_frames": other[0],
        "lost": lost,
        "cpu_cores": cpu / (time.perf_counter() - t0),
        "per_event": sorted([float(k), *v] for k, v in per_event.items()),
    }
    print(json.dumps(out), flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--plan", help="JSON file: a list of [path, key], one subscriber each")
    parser.add_argument("--auth", default="")
    parser.add_argument("--event", default="user.message")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    raise_nofile()
    run_async(main(args))


if __name__ == "__main__":
    cli()
