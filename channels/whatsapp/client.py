"""A small async client for the Graph API calls the gateway makes (facts §3).

    client = GraphClient(http, base_url="https://graph.facebook.com", version="v25.0", token=token)
    wamid = await client.send(pnid, text_payload(wa_id, "Hi!", reply_to=inbound_wamid))
    await client.mark_read(pnid, inbound_wamid, typing=True)
    data, mime = await client.download_media(media_id, pnid, max_bytes=16_000_000)

Every failure is a `GraphError` subclass (channels.whatsapp.errors) with
`retryable` set, so the outbox never has to look at HTTP details. The shared
`httpx.AsyncClient` is the caller's (connection pooling); each call is bounded
by its own total timeout, not only httpx's per-phase ones.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from channels.whatsapp.errors import (
    GraphError,
    MediaTooLarge,
    PermanentGraphError,
    RateLimited,
    TokenExpired,
    TransientGraphError,
    Undeliverable,
    WindowClosed,
)

T = TypeVar("T")

_BSUID = re.compile(r"[A-Z]{2}\.[A-Za-z0-9.]{1,160}")
_RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80007, 130429, 131056})
_TRANSIENT_CODES = frozenset({1, 2, 131000, 131057})
_BY_CODE: dict[int, type[GraphError]] = {
    190: TokenExpired,
    131047: WindowClosed,
    131026: Undeliverable,
    **{code: RateLimited for code in _RATE_LIMIT_CODES},
    **{code: TransientGraphError for code in _TRANSIENT_CODES},
}
_PREVIEW = 300


# -- payload builders -----------------------------------------------------------------------


def is_bsuid(address: str) -> bool:
    """A business-scoped user id (`US.1349…`, `US.ENT.…`) rather than a phone number."""
    return _BSUID.fullmatch(address) is not None


def recipient(to: str) -> dict[str, str]:
    """The addressing fields for `to`: a BSUID goes in `recipient`, a number in `to`.

    A bare wa_id (digits) gets its `+`: without it Meta prepends the business
    number's country code (facts §3), which misdelivers international numbers.
    """
    to = to.strip()
    if is_bsuid(to):
        return {"recipient": to}
    return {"to": f"+{to}" if to.isdigit() else to}


def _message(to: str, kind: str, body: dict[str, Any], biz_opaque: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    payload.update(recipient(to))
    payload["type"] = kind
    payload[kind] = body
    if biz_opaque is not None:
        payload["biz_opaque_callback_data"] = biz_opaque
    return payload


def text_payload(
    to: str,
    body: str,
    reply_to: str | None = None,
    preview_url: bool = False,
    biz_opaque: str | None = None,
) -> dict[str, Any]:
    """A text message; `reply_to` (a wamid) threads it as a reply. `body` must be <= 4096."""
    payload = _message(to, "text", {"body": body, "preview_url": preview_url}, biz_opaque)
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


def template_payload(
    to: str,
    name: str,
    language: str,
    components: list[dict[str, Any]] | None = None,
    biz_opaque: str | None = None,
) -> dict[str, Any]:
    """An approved template: the only thing that may go out once the 24 h window closed."""
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = components
    return _message(to, "template", template, biz_opaque)


def read_payload(wamid: str, typing: bool = False) -> dict[str, Any]:
    """Mark `wamid` (and earlier messages) read; `typing` also shows "typing…" for <= 25 s."""
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    if typing:
        payload["typing_indicator"] = {"type": "text"}
    return payload


# -- errors ---------------------------------------------------------------------------------


def graph_error(status: int, body: bytes, headers: httpx.Headers | None = None) -> GraphError:
    """The typed error for a non-2xx Graph response (envelope in facts §3)."""
    envelope = _json_object(body).get("error")
    error = envelope if isinstance(envelope, dict) else {}
    code = _int(error.get("code"))
    message = _text(error.get("message")) or _preview(body) or f"HTTP {status}"
    data = error.get("error_data")
    details = _text(data.get("details")) if isinstance(data, dict) else None
    if code in _BY_CODE:
        cls = _BY_CODE[code]
    elif error.get("is_transient") is True or status >= 500:
        cls = TransientGraphError
    elif status == 401:
        cls = TokenExpired
    elif status == 429:
        cls = RateLimited
    else:
        cls = PermanentGraphError
    return cls(
        message,
        code=code,
        subcode=_int(error.get("error_subcode")),
        title=_text(error.get("error_user_title")) or message,
        details=details or _text(error.get("error_user_msg")) or "",
        status=status,
        retry_after=_retry_after(headers),
        fbtrace_id=_text(error.get("fbtrace_id")),
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(headers: httpx.Headers | None) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _preview(body: bytes) -> str:
    return body[:_PREVIEW].decode("utf-8", "replace").strip()


# -- the client -----------------------------------------------------------------------------


MEDIA_ID = re.compile(r"^[0-9]{1,32}$")
# Where Graph's media URLs point (lookaside.fbsbx.com today); the token goes nowhere else.
META_MEDIA_HOSTS = ("facebook.com", "fbsbx.com", "fbcdn.net", "whatsapp.net")


class GraphClient:
    """Calls `{base_url}/{version}/…` with the bearer token of one WhatsApp business account."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        version: str,
        token: str,
        timeout: float = 15,
        download_timeout: float = 120,
    ) -> None:
        self._http = http
        self._root = f"{base_url.rstrip('/')}/{version.strip('/')}"
        self._token = token
        self._timeout = timeout
        self._download_timeout = download_timeout

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def send(self, phone_number_id: str, payload: dict[str, Any]) -> str:
        """Send one message; returns its wamid. Accepted by Meta is not delivered (see statuses)."""
        body = await self._post(f"{phone_number_id}/messages", {"messaging_product": "whatsapp", **payload})
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            # Accepted but unreadable: retrying could deliver twice, so it is not retryable.
            raise PermanentGraphError("send response has no message id", status=200, retryable=False)
        return wamid

    async def mark_read(self, phone_number_id: str, wamid: str, typing: bool = False) -> None:
        await self._post(f"{phone_number_id}/messages", read_payload(wamid, typing))

    async def media_info(self, media_id: str, phone_number_id: str | None = None) -> dict[str, Any]:
        """`{url, mime_type, sha256, file_size, id}`; the url lives 5 minutes.

        A media id comes from a webhook: it must look like one (digits), so it can
        never reach another Graph path with the bearer token.
        """
        if not MEDIA_ID.match(media_id):
            raise PermanentGraphError(f"not a Graph media id: {media_id[:40]!r}", status=400, retryable=False)
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        response = await self._call(
            self._timeout,
            lambda: self._http.get(f"{self._root}/{media_id}", params=params, headers=self._auth),
        )
        return _json_object(response.content)

    def media_host_allowed(self, url: str) -> bool:
        """The bearer token goes to Graph's own host or Meta's media hosts, over https, only."""
        try:
            target, root = httpx.URL(url), httpx.URL(self._root)
        except (httpx.InvalidURL, ValueError):
            return False
        if target.scheme == root.scheme and target.host == root.host and target.port == root.port:
            return True
        host = target.host.lower()
        return target.scheme == "https" and any(host == h or host.endswith("." + h) for h in META_MEDIA_HOSTS)

    async def download(self, url: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """`(bytes, content type)` of a media URL. The bearer token is required here too."""
        if not self.media_host_allowed(url):
            raise PermanentGraphError("media URL is not on a Meta host", status=400, retryable=False)
        return await self._bounded(self._download_timeout, self._stream(url, max_bytes))

    async def download_media(
        self, media_id: str, phone_number_id: str | None = None, max_bytes: int | None = None
    ) -> tuple[bytes, str]:
        """Media id -> URL -> bytes. A 404 on the URL (expired) gets one fresh URL (facts §3)."""
        fetched = await self._fetch_media(media_id, phone_number_id, max_bytes, last_try=False)
        if fetched is None:
            fetched = await self._fetch_media(media_id, phone_number_id, max_bytes, last_try=True)
        assert fetched is not None
        return fetched

    async def _fetch_media(
        self, media_id: str, phone_number_id: str | None, max_bytes: int | None, *, last_try: bool
    ) -> tuple[bytes, str] | None:
        """None when the download URL had expired (404) and another try is allowed."""
        info = await self.media_info(media_id, phone_number_id)
        url = info.get("url")
        if not isinstance(url, str) or not url:
            raise PermanentGraphError(f"media {media_id} has no url", status=200)
        size = _int(info.get("file_size"))
        if max_bytes is not None and size is not None and size > max_bytes:
            raise MediaTooLarge(f"media {media_id} is {size} bytes, limit {max_bytes}", status=200)
        try:
            data, mime = await self.download(url, max_bytes)
        except PermanentGraphError as exc:
            if exc.status == 404 and not last_try:
                return None
            raise
        declared = info.get("mime_type")
        return data, (declared if isinstance(declared, str) and declared else mime)

    # -- plumbing ---------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = await self._call(
            self._timeout,
            lambda: self._http.post(f"{self._root}/{path}", json=payload, headers=self._auth),
        )
        return _json_object(response.content)

    async def _call(self, seconds: float, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        response = await self._bounded(seconds, request())
        if not response.is_success:
            raise graph_error(response.status_code, response.content, response.headers)
        return response

    async def _stream(self, url: str, max_bytes: int | None) -> tuple[bytes, str]:
        async with self._http.stream("GET", url, headers=self._auth, follow_redirects=False) as response:
            if not response.is_success:
                body = await response.aread()
                raise graph_error(response.status_code, body, response.headers)
            declared = _int(response.headers.get("content-length"))
            if max_bytes is not None and declared is not None and declared > max_bytes:
                raise MediaTooLarge(
                    f"media is {declared} bytes, limit {max_bytes}", status=response.status_code
                )
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise MediaTooLarge(f"media exceeds {max_bytes} bytes", status=response.status_code)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", "application/octet-stream")

    async def _bounded(self, seconds: float, work: Awaitable[T]) -> T:
        """`work` within `seconds` in total; network failures become TransientGraphError."""
        try:
            async with asyncio.timeout(seconds):
                return await work
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransientGraphError(
                f"Graph API call timed out after {seconds:g} s", title="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientGraphError(f"Graph API unreachable: {type(exc).__name__}: {exc}") from exc
