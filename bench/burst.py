"""One webhook delivery carrying a burst of messages: time to the 200, to the first reply.

`python -m bench.burst [--sizes 1000,3000]`. A broadcast campaign brings replies from
thousands of contacts at once, and Meta may batch many messages into one delivery; it
gives a webhook only a few seconds before it counts the delivery as failed and retries.

For each size N: a fresh gateway (`bench.serve_gateway`, agent `wa`, echo at zero
delay, own SQLite file) and the fake Graph API (`bench.serve_fake_graph`), one signed
POST whose `value.messages` holds N text messages from N new contacts (unique wamids).
Measured: the 200 (everything stored), the first reply accepted by the fake Graph,
and every reply accepted. The baseline printed beside it is the same POST to the bare
server's verify + parse route (what answering costs when nothing is stored).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import WA_APP_SECRET, WA_ENV, WA_PNID, running
from bench.webhook import graph_stats


def delivery(n: int, serial: int) -> bytes:
    contacts = [
        {"profile": {"name": f"Burst {i:05d}"}, "wa_id": f"3469{serial:02d}{i:06d}"} for i in range(n)
    ]
    messages = [
        {
            "from": f"3469{serial:02d}{i:06d}",
            "id": f"wamid.BURST{serial:02d}{i:08d}=",
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": f"campaign reply {i}"},
        }
        for i in range(n)
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": WA_PNID},
        "contacts": contacts,
        "messages": messages,
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signed(body: bytes) -> dict[str, str]:
    sig = hmac.new(WA_APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={sig}"}


async def one(n: int, log_dir: Path, serial: int, answer_timeout: float) -> dict[str, Any]:
    body = delivery(n, serial)
    async with running("bare", log_dir) as bare, httpx.AsyncClient(timeout=120) as c:
        t0 = time.perf_counter()
        r = await c.post(f"{bare.url}/whatsapp/webhook", content=body, headers=signed(body))
        bare_ack = time.perf_counter() - t0
        assert r.status_code == 200, r.text
    async with running("fake_graph", log_dir) as graph:
        async with running("gateway", log_dir, args=["--graph-url", graph.url], env=WA_ENV) as gw:
            async with httpx.AsyncClient(timeout=120) as c:
                t0 = time.perf_counter()
                r = await c.post(f"{gw.url}/whatsapp/webhook", content=body, headers=signed(body))
                ack = time.perf_counter() - t0
                assert r.status_code == 200, r.text
            first = every = float("nan")
            while time.perf_counter() - t0 < answer_timeout:
                sends = (await graph_stats(graph)).get("sends", 0)
                if sends and first != first:
                    first = time.perf_counter() - t0
                if sends >= n:
                    every = time.perf_counter() - t0
                    break
                await asyncio.sleep(0.02)
    return {"n": n, "bare_ack_s": bare_ack, "ack_s": ack, "first_reply_s": first, "all_replies_s": every}


async def main(sizes: list[int], answer_timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for serial, n in enumerate(sizes):
            out = await one(n, Path(tmp), serial, answer_timeout)
            print(
                f"{n:>6} messages in one delivery: 200 after {out['ack_s']:.2f} s "
                f"(bare verify + parse {out['bare_ack_s'] * 1000:.0f} ms); "
                f"first reply at {out['first_reply_s']:.2f} s; every reply at {out['all_replies_s']:.1f} s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,3000")
    parser.add_argument("--answer-timeout", type=float, default=300)
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.sizes.split(",")], args.answer_timeout))
