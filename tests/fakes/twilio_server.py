"""A fake Twilio REST API over real HTTP on 127.0.0.1.

    async with FakeTwilio(account_sid="AC…", auth_token="tok") as tw:
        tw.fail_next(1, 429, 20429, "Too Many Requests", headers={"retry-after": "0"})
        ...  # point a TwilioClient (or `api_base_url`) at tw.base_url
        tw.messages      # the form of every Message created (dict: key -> list of values)
        tw.calls         # the form of every Call created
        tw.call_updates  # (call_sid, form) of every call update
        tw.requests      # every request, failures included

Routes (HTTP basic auth with the account SID and auth token, else 401 / code 20003):

    POST /2010-04-01/Accounts/{AC}/Messages.json       -> 201 {"sid": "SM…", "status": "queued", …}
    POST /2010-04-01/Accounts/{AC}/Calls.json          -> 201 {"sid": "CA…", "status": "queued", …}
    POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json     -> 200 {"sid": "CA…", "status": …}

Missing `To`/`From` (or `Body`/`MediaUrl` for messages) answers 400 with code 21604/21603,
as Twilio does. Built on ScriptedServer, so stalls are real pauses on a real socket.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.scripted_http import Recorded, Reply, ScriptedServer

JSON = {"content-type": "application/json"}
Form = dict[str, list[str]]


@dataclass
class _Failure:
    left: int
    status: int
    code: int | None
    message: str
    on: str | None
    headers: dict[str, str]


class FakeTwilio(ScriptedServer):
    def __init__(self, *, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-auth-token") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[Form] = []
        self.message_sids: list[str] = []  # the sid given to each of `messages`
        self.calls: list[Form] = []
        self.call_updates: list[tuple[str, Form]] = []
        self._failures: deque[_Failure] = deque()
        self._stalls: deque[float] = deque()

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        code: int | None = None,
        message: str = "Internal error",
        *,
        on: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next `n` requests (whose path contains `on`, if given) fail with a Twilio error."""
        self._failures.append(_Failure(n, status, code, message, on, dict(headers or {})))

    def stall_next(self, seconds: float, n: int = 1) -> None:
        self._stalls.extend([seconds] * n)

    def bodies(self) -> list[str]:
        return [m.get("Body", [""])[0] for m in self.messages]

    async def _answer(self, request: Recorded) -> Reply:
        if request.path.split("?", 1)[0] in self._routes:  # e.g. media files a test serves
            return await super()._answer(request)
        reply = self._reply(request)
        if self._stalls:
            reply.stall_before = self._stalls.popleft()
        return reply

    def _reply(self, request: Recorded) -> Reply:
        path = request.path.split("?", 1)[0]
        for failure in self._failures:
            if failure.on is None or failure.on in path:
                failure.left -= 1
                if failure.left <= 0:
                    self._failures.remove(failure)
                return _json(
                    failure.status, _error(failure.status, failure.code, failure.message), failure.headers
                )
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return _json(401, _error(401, 20003, "Authenticate"))
        prefix = f"/2010-04-01/Accounts/{self.account_sid}/"
        if request.method != "POST" or not path.startswith(prefix):
            return _json(404, _error(404, 20404, f"The requested resource {path} was not found"))
        form = parse_qs(request.body.decode(), keep_blank_values=True)
        resource = path[len(prefix) :]
        if resource == "Messages.json":
            return self._message(form)
        if resource == "Calls.json":
            return self._call(form)
        if resource.startswith("Calls/") and resource.endswith(".json"):
            sid = resource[len("Calls/") : -len(".json")]
            self.call_updates.append((sid, form))
            status = form.get("Status", ["in-progress"])[0]
            return _json(200, {"sid": sid, "status": status, "account_sid": self.account_sid})
        return _json(404, _error(404, 20404, f"The requested resource {path} was not found"))

    def _message(self, form: Form) -> Reply:
        if not form.get("To"):
            return _json(400, _error(400, 21604, "A 'To' phone number is required."))
        if not form.get("From"):
            return _json(400, _error(400, 21603, "A 'From' phone number is required."))
        if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
            return _json(400, _error(400, 21602, "Message body is required."))
        if len(form.get("Body", [""])[0]) > 1600:
            return _json(
                400, _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            )
        self.messages.append(form)
        sid = f"SM{secrets.token_hex(16)}"  # random, as Twilio's are: never an inbound's sid
        self.message_sids.append(sid)
        return _json(
            201,
            {
                "sid": sid,
                "status": "queued",
                "to": form["To"][0],
                "from": form["From"][0],
                "body": form.get("Body", [""])[0],
                "num_media": str(len(form.get("MediaUrl", []))),
                "account_sid": self.account_sid,
            },
        )

    def _call(self, form: Form) -> Reply:
        if not form.get("To"):
            return _json(400, _error(400, 21201, "No 'To' number is specified"))
        if not form.get("From"):
            return _json(400, _error(400, 21213, "No 'From' number is specified"))
        if not form.get("Twiml") and not form.get("Url"):
            return _json(400, _error(400, 21205, "Url or Twiml is required"))
        self.calls.append(form)
        sid = f"CA{secrets.token_hex(16)}"
        return _json(201, {"sid": sid, "status": "queued", "to": form["To"][0], "from": form["From"][0]})


def _error(status: int, code: int | None, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "status": status}
    if code is not None:
        body["code"] = code
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    return body


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status=status, headers={**JSON, **(headers or {})}, pieces=[json.dumps(body).encode()], chunked=False
    )
