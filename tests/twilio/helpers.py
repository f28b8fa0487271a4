"""Shared by the Twilio tests: a gateway wired to a fake Twilio REST server, and signed posts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from channels.twilio.signature import sign
from tests.conftest import Running, make_settings, run_gateway
from tests.fakes.twilio_server import FakeTwilio

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-auth-token-1"
SMS_NUMBER = "+15550102001"
WA_NUMBER = "whatsapp:+15550102002"
CALLER = "+15557654321"
ENV = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}


def numbers(fake: FakeTwilio, *nums: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"number": n, "api_base_url": fake.base_url, **extra} for n in (nums or (SMS_NUMBER, WA_NUMBER))]


def twilio_settings(
    sqlite_url: str, fake: FakeTwilio, *, server: Mapping[str, Any] | None = None, **agent: Any
) -> Any:
    support = {"answer": "echo", "echo_delay_ms": 0, "twilio": numbers(fake), **agent}
    dev = {"answer": "echo", "echo_delay_ms": 0, "prompt": "dev"}
    srv = {
        "outbox_poll_seconds": 0.05,
        "outbox_retry_base_seconds": 0.05,
        "limits_sweep_seconds": 0.1,
        **(server or {}),
    }
    return make_settings(sqlite_url, agents={"support": support, "dev-berna-support": dev}, server=srv)


@asynccontextmanager
async def twilio_gateway(
    sqlite_url: str, *, server: Mapping[str, Any] | None = None, **agent: Any
) -> AsyncIterator[tuple[Running, FakeTwilio]]:
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        async with run_gateway(twilio_settings(sqlite_url, fake, server=server, **agent), env=ENV) as g:
            yield g, fake


async def signed_post(
    g: Running,
    path: str,
    params: Mapping[str, str],
    *,
    token: str | None = AUTH_TOKEN,
    signed_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST a form as Twilio does, signed over `signed_url` (default: the URL requested)."""
    url = g.url + path
    h = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
    if token is not None:
        h["x-twilio-signature"] = sign(token, signed_url or url, params)
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url, data=dict(params), headers=h)


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
