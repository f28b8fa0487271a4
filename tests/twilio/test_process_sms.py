"""The real `gateway` process with a Twilio number, killed with SIGKILL while replies are on
their way: nothing is lost and nothing is sent twice."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from channels.twilio.signature import sign
from tests.conftest import ADMIN, free_port
from tests.fakes.twilio_server import FakeTwilio
from tests.test_process import Proc, procs  # noqa: F401 (fixture)
from tests.twilio.helpers import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER


def config(tmp: Path, port: int, fake: FakeTwilio) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[server]
database_url = "sqlite+aiosqlite:///{tmp / "gw.db"}"
public_url = "http://127.0.0.1:{port}"
outbox_poll_seconds = 0.05
outbox_retry_base_seconds = 2
outbox_max_attempts = 1000
outbox_uncertain_grace_seconds = 60

[agents.support]
answer = "echo"
echo_delay_ms = 0

[[agents.support.twilio]]
number = "{SMS_NUMBER}"
api_base_url = "{fake.base_url}"
""")
    return path


async def post_form(url: str, form: dict[str, str]) -> httpx.Response:
    headers = {"x-twilio-signature": sign(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url, data=form, headers=headers)


def inbound(i: int) -> dict[str, str]:
    return {
        "MessageSid": f"SM{i:032d}",
        "AccountSid": ACCOUNT_SID,
        "From": f"+3460000000{i}",
        "To": SMS_NUMBER,
        "Body": f"reply number {i}",
        "NumMedia": "0",
    }


async def until(predicate: object, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_sms_replies_survive_a_kill_exactly_once(tmp_path: Path, procs: list[Proc]) -> None:  # noqa: F811
    port = free_port()
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        path = config(tmp_path, port, fake)
        os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"] = ACCOUNT_SID, AUTH_TOKEN
        try:
            # 1. Twilio is down while 4 replies are queued; the gateway dies between attempts.
            fake.fail_next(100_000, 503, 20503, "Service unavailable", on="Messages")
            first = Proc(path, port, "--migrate")
            procs.append(first)
            await first.ready()
            for i in range(4):
                r = await post_form(f"{first.url}/twilio/messaging", inbound(i))
                assert r.status_code == 200, r.text  # acknowledged only once stored
            await until(lambda: len({r.body for r in fake.requests if "Messages" in r.path}) >= 4)
            await asyncio.sleep(0.3)
            first.p.send_signal(signal.SIGKILL)
            await first.wait()
            fake._failures.clear()
            assert fake.messages == []

            # 2. After the restart every reply goes out once. A fifth one is cut mid-call:
            # Twilio accepts it but the gateway dies before the answer arrives.
            second = Proc(path, port)
            procs.append(second)
            await second.ready()
            await until(lambda: len(fake.messages) == 4)
            fake.stall_next(30)
            r = await post_form(f"{second.url}/twilio/messaging", inbound(4))
            assert r.status_code == 200
            await until(lambda: len(fake.messages) == 5)
            second.p.send_signal(signal.SIGKILL)
            await second.wait()

            # 3. The third process does not send it again: it waits for Twilio's receipt,
            # which names the part by the key in its status-callback URL.
            third = Proc(path, port)
            procs.append(third)
            await third.ready()
            await asyncio.sleep(1.0)
            assert len(fake.messages) == 5
            cut = fake.messages[4]
            receipt = {
                "MessageSid": "SM" + "f" * 32,
                "MessageStatus": "delivered",
                "AccountSid": ACCOUNT_SID,
                "From": SMS_NUMBER,
                "To": cut["To"][0],
            }
            assert (await post_form(cut["StatusCallback"][0], receipt)).status_code == 200
            async with httpx.AsyncClient(
                base_url=third.url, headers={"authorization": f"Bearer {ADMIN}"}
            ) as c:
                sessions = (await c.get("/v1/sessions", params={"contact": cut["To"][0]})).json()["sessions"]
                detail = (await c.get(f"/v1/sessions/{sessions[0]['sessionId']}")).json()
            reply = detail["messages"][-1]
            assert reply["status"] == "delivered" and reply["providerMessageId"] == "SM" + "f" * 32
        finally:
            os.environ.pop("TWILIO_ACCOUNT_SID", None)
            os.environ.pop("TWILIO_AUTH_TOKEN", None)
    bodies = sorted(m["Body"][0] for m in fake.messages)
    assert bodies == [f"reply number {i}" for i in range(5)]
