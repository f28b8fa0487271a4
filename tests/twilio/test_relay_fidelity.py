"""ConversationRelay fidelity (issue 16) over real sockets: a proper close after `end`."""

from __future__ import annotations

import asyncio
import json

from tests.twilio.helpers import twilio_gateway
from tests.twilio.relay_client import connected_call


async def test_end_is_followed_by_a_close_frame(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "e" * 32) as (relay, sid):
        async with g.client() as c:
            assert (await c.post(f"/v1/calls/{sid}/hangup")).status_code == 200
        end = await relay.recv()
        assert end["type"] == "end" and json.loads(end["handoffData"])["action"] == "hangup"
        async with asyncio.timeout(5):
            await relay.ws.wait_closed()
        # 1000 with a reason, not 1006 (a TCP drop without a close frame).
        assert relay.ws.close_code == 1000 and relay.ws.close_reason == "relay session ended"


async def test_a_limit_ends_the_call_with_a_close_frame(sqlite_url: str) -> None:
    phone = {"idle_timeout_seconds": 0.3, "idle_warning_seconds": 0, "idle_grace_seconds": 0}
    async with (
        twilio_gateway(sqlite_url, phone=phone) as (g, _),
        connected_call(g, "CA" + "c" * 32) as (relay, _sid),
    ):
        assert (await relay.recv(5))["type"] == "end"
        async with asyncio.timeout(5):
            await relay.ws.wait_closed()
        assert relay.ws.close_code == 1000
