"""A trivial fake WhatsApp Graph API: `python -m bench.serve_fake_graph --port N`.

The webhook benchmark's gateway answers every inbound message (echo), so each one
becomes a mark-read/typing call and a send to `POST /{version}/{pnid}/messages`.
This server accepts both at once: a send gets `{"messages":[{"id":"wamid.x<n>"}]}`,
a read receipt (`"status":"read"`) gets `{"success":true}`. No checks, no storage:
a raw ASGI app (no framework) so it takes as little of the 2 cores as possible.

`GET /stats` → `{"sends": n, "reads": m}`; `GET /healthz`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

import uvicorn

from bench.common import HOST, raise_nofile

HEADERS = [(b"content-type", b"application/json")]
COUNTS = {"sends": 0, "reads": 0}
_IDS = itertools.count(1)


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    method, path = scope["method"], scope["path"]
    if method == "POST" and path.endswith("/messages"):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if b'"status"' in body and b'"read"' in body:
            COUNTS["reads"] += 1
            await _reply(send, 200, b'{"success":true}')
        else:
            COUNTS["sends"] += 1
            await _reply(
                send, 200, b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.x%d"}]}' % next(_IDS)
            )
    elif method == "GET" and path == "/stats":
        await _reply(send, 200, json.dumps(COUNTS).encode())
    elif method == "GET" and path == "/healthz":
        await _reply(send, 200, b'{"status":"ok"}')
    else:
        await _reply(send, 404, b'{"error":{"message":"not found","code":100}}')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
