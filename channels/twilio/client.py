"""Twilio's REST API, the few calls the gateway makes, over one shared async httpx client.

Every call is a form POST under `/2010-04-01/Accounts/{AccountSid}/…` with HTTP
basic auth (account SID, auth token). Failures become `TwilioError`s that say
whether a retry is safe: 429 and 5xx are retried; a read timeout may have been
accepted (`maybe_sent`), so it is never resent blindly; other 4xx are final.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from channels.twilio.errors import TwilioError

API_VERSION = "2010-04-01"
# Where Twilio keeps message media (a MediaUrl on api.twilio.com redirects there).
MEDIA_HOSTS = ("twilio.com", "twiliocdn.com", "amazonaws.com")
CALL_EVENTS = ("initiated", "ringing", "answered", "completed")


class TwilioClient:
    def __init__(self, http: httpx.AsyncClient, *, base_url: str, account_sid: str, auth_token: str) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.account_sid = account_sid
        self._auth = httpx.BasicAuth(account_sid, auth_token)

    def _url(self, resource: str) -> str:
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/{resource}"

    async def send_message(
        self,
        *,
        from_: str,
        to: str,
        body: str | None,
        media_urls: Sequence[str] = (),
        status_callback: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
    ) -> dict[str, Any]:
        """Create a Message (SMS, MMS or WhatsApp); returns Twilio's resource (`sid`, `status`).

        With `content_sid` it is an approved Content template (`content_variables`: JSON).
        """
        form: list[tuple[str, str]] = [("To", to), ("From", from_)]
        if content_sid:
            form.append(("ContentSid", content_sid))
            if content_variables:
                form.append(("ContentVariables", content_variables))
        if body:
            form.append(("Body", body))
        form.extend(("MediaUrl", url) for url in media_urls)
        if status_callback:
            form.append(("StatusCallback", status_callback))
        return await self._post("Messages.json", form)

    async def create_call(
        self, *, from_: str, to: str, twiml: str, status_callback: str | None = None, ring_seconds: int = 30
    ) -> dict[str, Any]:
        """Place an outbound call that runs `twiml` when answered."""
        form: list[tuple[str, str]] = [
            ("To", to),
            ("From", from_),
            ("Twiml", twiml),
            ("Timeout", str(ring_seconds)),
        ]
        if status_callback:
            form.append(("StatusCallback", status_callback))
            form.append(("StatusCallbackMethod", "POST"))
            form.extend(("StatusCallbackEvent", e) for e in CALL_EVENTS)
        return await self._post("Calls.json", form)

    async def update_call(
        self, call_sid: str, *, twiml: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """Redirect a live call to new TwiML, or end it (`status="completed"`)."""
        form: list[tuple[str, str]] = []
        if twiml is not None:
            form.append(("Twiml", twiml))
        if status is not None:
            form.append(("Status", status))
        return await self._post(f"Calls/{call_sid}.json", form)

    def media_url_allowed(self, url: str) -> bool:
        """Is `url` a media file of this account on Twilio's API host?

        A webhook's `MediaUrlN` is only a hint: the gateway fetches (with the account's
        credentials) only `{api_base_url}/2010-04-01/Accounts/{our AccountSid}/…`.
        """
        try:
            parts, base = urlsplit(url), urlsplit(self.base_url)
        except ValueError:
            return False
        prefix = f"{base.path.rstrip('/')}/{API_VERSION}/Accounts/{self.account_sid}/"
        return (
            parts.scheme == base.scheme
            and parts.netloc.lower() == base.netloc.lower()
            and not parts.username
            and parts.path.startswith(prefix)
            and ".." not in parts.path
        )

    def _redirect_allowed(self, url: httpx.URL) -> bool:
        """Twilio keeps media on its own storage hosts (and S3); a redirect goes nowhere else."""
        host = url.host.lower()
        base = httpx.URL(self.base_url)
        if url.scheme == base.scheme and host == base.host.lower() and url.port == base.port:
            return True
        return url.scheme == "https" and any(host == h or host.endswith("." + h) for h in MEDIA_HOSTS)

    async def download(self, url: str, *, max_bytes: int) -> tuple[bytes, str]:
        """A media file of a message (`MediaUrlN`): Twilio redirects it to storage; basic auth
        is needed when the account protects its media, and is sent to Twilio's API host only.
        Redirects are followed (at most 3) to Twilio's media hosts only, without credentials."""
        if not self.media_url_allowed(url):
            raise TwilioError("media URL is not on this account's Twilio API host", retryable=False)
        try:
            response = await self._follow(url, max_bytes)
        except httpx.HTTPError as exc:
            raise TwilioError(f"media download failed: {exc!r}", retryable=True) from exc
        return response

    async def _follow(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        target = httpx.URL(url)
        auth: httpx.BasicAuth | None = self._auth
        for _hop in range(4):
            async with self._http.stream("GET", target, auth=auth, follow_redirects=False) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    target = target.join(location)
                    if not self._redirect_allowed(target):
                        raise TwilioError(
                            f"media redirected to a foreign host {target.host!r}", retryable=False
                        )
                    if target.host != httpx.URL(self.base_url).host:
                        auth = None  # credentials go to the API host only
                    continue
                if not response.is_success:
                    raise TwilioError(
                        f"media download answered HTTP {response.status_code}",
                        status=response.status_code,
                        retryable=response.status_code >= 500 or response.status_code == 429,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise TwilioError(f"media larger than {max_bytes} bytes", retryable=False)
                    chunks.append(chunk)
                mime = response.headers.get("content-type", "").split(";", 1)[0].strip()
                return b"".join(chunks), mime
        raise TwilioError("media download redirected too many times", retryable=False)

    async def _post(self, resource: str, form: list[tuple[str, str]]) -> dict[str, Any]:
        try:
            response = await self._http.post(self._url(resource), data=_encode(form), auth=self._auth)
        except httpx.ConnectError as exc:
            raise TwilioError(f"Twilio unreachable: {exc!r}", retryable=True) from exc
        except httpx.ConnectTimeout as exc:
            raise TwilioError("timed out connecting to Twilio", retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise TwilioError("Twilio did not answer in time", retryable=True, maybe_sent=True) from exc
        except httpx.HTTPError as exc:
            raise TwilioError(f"Twilio request failed: {exc!r}", retryable=True, maybe_sent=True) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        raise _error(response, body)


def _encode(form: list[tuple[str, str]]) -> dict[str, Any]:
    # httpx sends a list value as a repeated key (MediaUrl, StatusCallbackEvent).
    out: dict[str, Any] = {}
    for key, value in form:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def _error(response: httpx.Response, body: Any) -> TwilioError:
    status = response.status_code
    info = body if isinstance(body, dict) else {}
    code = info.get("code") if isinstance(info.get("code"), int) else None
    message = str(info.get("message") or response.text[:200] or f"HTTP {status}")
    retry_after = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    retryable = status == 429 or status >= 500
    details = {k: v for k, v in info.items() if k in ("more_info", "status")} if info else {}
    if not info and response.text:
        details = {"body": response.text[:200]}
    return TwilioError(
        message,
        status=status,
        code=code,
        retryable=retryable,
        retry_after=retry_after,
        details=json.loads(json.dumps(details)),
    )
