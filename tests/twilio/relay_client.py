"""A scripted ConversationRelay peer: what Twilio does on the relay socket, over a real socket."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from channels.twilio.signature import sign
from tests.conftest import Running
from tests.twilio.helpers import ACCOUNT_SID, AUTH_TOKEN, CALLER, SMS_NUMBER, signed_post


def relay_params(twiml: str) -> dict[str, str]:
    """The <Parameter>s of a ConversationRelay TwiML (they come back in `setup`)."""
    return dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]*)"', twiml))


def setup_frame(
    call_sid: str,
    params: dict[str, str],
    *,
    from_: str = CALLER,
    to: str = SMS_NUMBER,
    direction: str = "inbound",
) -> dict[str, Any]:
    return {
        "type": "setup",
        "sessionId": "VX" + "0" * 32,
        "accountSid": ACCOUNT_SID,
        "parentCallSid": "",
        "callSid": call_sid,
        "from": from_,
        "to": to,
        "forwardedFrom": "",
        "callerName": "",
        "direction": direction,
        "callType": "PSTN",
        "callStatus": "RINGING",
        "customParameters": params,
    }


class Relay:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def prompt(self, text: str, last: bool = True) -> None:
        await self.send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": last})

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        obj: dict[str, Any] = json.loads(raw)
        return obj

    async def reply(self, timeout: float = 10) -> tuple[str, list[dict[str, Any]]]:
        """Text frames up to the one with `last: true`: (the text, the frames)."""
        frames = []
        while True:
            frame = await self.recv(timeout)
            assert frame["type"] == "text", frame
            frames.append(frame)
            if frame["last"]:
                return "".join(f["token"] for f in frames), frames


async def incoming_call(
    g: Running, call_sid: str, *, from_: str = CALLER, to: str = SMS_NUMBER, token: str | None = AUTH_TOKEN
) -> Any:
    return await signed_post(
        g,
        "/twilio/voice",
        {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT_SID,
            "From": from_,
            "To": to,
            "Caller": from_,
            "Called": to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        },
        token=token,
    )


@asynccontextmanager
async def relay_socket(g: Running, *, token: str | None = AUTH_TOKEN) -> AsyncIterator[Relay]:
    url = f"{g.ws_url}/twilio/relay"
    headers = {"X-Twilio-Signature": sign(token, url)} if token else {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        yield Relay(ws)


@asynccontextmanager
async def connected_call(g: Running, call_sid: str, **kw: Any) -> AsyncIterator[tuple[Relay, str]]:
    """An incoming call answered with TwiML, then its relay socket after `setup`: (relay, session id)."""
    answer = await incoming_call(g, call_sid, **kw)
    assert answer.status_code == 200, answer.text
    params = relay_params(answer.text)
    async with relay_socket(g) as relay:
        await relay.send(setup_frame(call_sid, params))
        await until_connected(g, params["sessionId"])
        yield relay, params["sessionId"]


async def until_connected(g: Running, session_id: str) -> None:
    """Setup has been handled: the session exists and its relay is live."""
    async with asyncio.timeout(10):
        while session_id not in getattr(g.runtime.calls, "live", {}):
            await asyncio.sleep(0.01)
