"""A fake WhatsApp Cloud API (Graph) server over real HTTP on 127.0.0.1.

    async with FakeGraph(token="t") as graph:
        graph.add_media("m1", b"OggS...", "audio/ogg")
        graph.fail_next(1, 400, 131047, "Re-engagement message")
        ...  # point a GraphClient at graph.base_url, version graph.version
        graph.sent        # JSON of every message accepted (graph.sent_ids: the wamid of each)
        graph.latency = 0.05  # every accepted message is answered this much later
        graph.hold()          # accepted messages get no answer until graph.release()
        graph.read_marks  # JSON of every mark-read / typing request
        graph.requests    # every request (method, path, headers, body), failures included

Routes (all require `Authorization: Bearer <token>`, else 401 with code 190):

    POST /{version}/{pnid}/messages   message -> {"messages": [{"id": "wamid.FAKE…"}]}
                                      {"status": "read", …} -> {"success": true}
    GET  /{version}/{media_id}        media info; its `url` points at /media/{media_id}
    GET  /media/{media_id}            the bytes, with the media's content type

Built on ScriptedServer, so stalls are real pauses on a real socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.fakes.scripted_http import Recorded, Reply, ScriptedServer

JSON = {"content-type": "application/json"}


@dataclass
class _Failure:
    left: int
    status: int
    code: int | None
    message: str
    on: str | None
    subcode: int | None
    headers: dict[str, str]
    raw: bytes | None


def graph_error_body(code: int | None, message: str, subcode: int | None = None) -> dict[str, Any]:
    """The Graph error envelope (facts §3)."""
    error: dict[str, Any] = {
        "message": f"(#{code}) {message}" if code is not None else message,
        "type": "OAuthException",
        "error_data": {"messaging_product": "whatsapp", "details": f"details of {message}"},
        "fbtrace_id": "AFakeTraceId",
    }
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


class FakeGraph(ScriptedServer):
    def __init__(self, *, token: str = "test-token", version: str = "v25.0") -> None:
        super().__init__()
        self.token = token
        self.version = version
        self.sent: list[dict[str, Any]] = []
        self.sent_ids: list[str] = []
        self.latency = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self.read_marks: list[dict[str, Any]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self._failures: deque[_Failure] = deque()
        self._stalls: deque[float] = deque()
        self._ids = itertools.count(1)

    # -- commands ---------------------------------------------------------------------------

    def add_media(self, media_id: str, data: bytes, mime: str) -> None:
        self.media[media_id] = (data, mime)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        code: int | None = None,
        message: str = "Something went wrong",
        *,
        on: str | None = None,
        subcode: int | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        """The next `n` requests (whose path contains `on`, if given) fail with a Graph error.

        `raw` replaces the JSON envelope (e.g. an HTML 502 from a proxy).
        """
        self._failures.append(_Failure(n, status, code, message, on, subcode, dict(headers or {}), raw))

    def stall_next(self, seconds: float, n: int = 1) -> None:
        """The next `n` requests wait `seconds` before the status line."""
        self._stalls.extend([seconds] * n)

    def hold(self) -> None:
        """Messages are accepted (recorded in `sent`) but answered only after `release()`:
        a provider that is slow to answer, so sends pile up mid-call."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def media_url(self, media_id: str) -> str:
        return f"{self.base_url}/media/{media_id}"

    # -- serving ----------------------------------------------------------------------------

    async def _answer(self, request: Recorded) -> Reply:
        accepted = len(self.sent)
        reply = self._reply(request)
        if len(self.sent) > accepted:  # a message (not a read mark) was accepted
            await self._open.wait()
        if self._stalls:
            reply.stall_before = self._stalls.popleft()
        elif self.latency and reply.status == 200:
            reply.stall_before = self.latency
        return reply

    def _reply(self, request: Recorded) -> Reply:
        path = request.path.split("?", 1)[0]
        failure = self._take_failure(path)
        if failure is not None:
            body = failure.raw
            if body is None:
                body = json.dumps(graph_error_body(failure.code, failure.message, failure.subcode)).encode()
            return Reply(
                status=failure.status, headers={**JSON, **failure.headers}, pieces=[body], chunked=False
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, graph_error_body(190, "Error validating access token", 463))
        parts = path.strip("/").split("/")
        if (
            request.method == "POST"
            and len(parts) == 3
            and parts[0] == self.version
            and parts[2] == "messages"
        ):
            return self._messages(request)
        if request.method == "GET" and len(parts) == 2 and parts[0] == self.version:
            return self._media_info(parts[1])
        if request.method == "GET" and len(parts) == 2 and parts[0] == "media" and parts[1] in self.media:
            data, mime = self.media[parts[1]]
            return Reply(headers={"content-type": mime}, pieces=[data], chunked=False)
        return _json(404, graph_error_body(100, f"Unknown path components: {path}", 33))

    def _take_failure(self, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.on is None or failure.on in path:
                failure.left -= 1
                if failure.left <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _messages(self, request: Recorded) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return _json(400, graph_error_body(100, "Invalid JSON"))
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return _json(400, graph_error_body(100, "Invalid parameter"))
        if body.get("status") == "read":
            if not body.get("message_id"):
                return _json(400, graph_error_body(131009, "Parameter value is not valid"))
            self.read_marks.append(body)
            return _json(200, {"success": True})
        to = body.get("to") or body.get("recipient")
        if not to or not body.get("type"):
            return _json(400, graph_error_body(131008, "Required parameter is missing"))
        wamid = f"wamid.FAKE{next(self._ids):06d}{secrets.token_hex(6).upper()}="
        self.sent.append(body)
        self.sent_ids.append(wamid)
        contact = {"input": to, "wa_id": str(to).lstrip("+")}
        return _json(
            200, {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
        )

    def _media_info(self, media_id: str) -> Reply:
        if media_id not in self.media:
            return _json(
                404, graph_error_body(100, f"Unsupported get request. Object {media_id} does not exist", 33)
            )
        data, mime = self.media[media_id]
        return _json(
            200,
            {
                "messaging_product": "whatsapp",
                "url": self.media_url(media_id),
                "mime_type": mime,
                "sha256": "0" * 64,
                "file_size": str(len(data)),
                "id": media_id,
            },
        )


def _json(status: int, body: dict[str, Any]) -> Reply:
    return Reply(status=status, headers=dict(JSON), pieces=[json.dumps(body).encode()], chunked=False)
