"""ConversationRelay over real sockets (issue 16): a proper close after `end`; application
reconnect with replayed frames (one answer per prompt), across a gateway restart too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from gateway.client import Gateway
from gateway.client.errors import CommandError
from tests.conftest import ADMIN, free_port, run_gateway
from tests.fakes.twilio_server import FakeTwilio
from tests.twilio.helpers import ACCOUNT_SID, AUTH_TOKEN, ENV, twilio_gateway, twilio_settings
from tests.twilio.relay_client import (
    connected_call,
    incoming_call,
    relay_params,
    relay_socket,
    setup_frame,
    until_connected,
)
from tests.twilio.test_voice import wait_event


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


# ------------------------------------------------- application reconnect and replay


async def _user_texts(g: Any, sid: str) -> list[str]:
    return [m.text for m in await g.runtime.store.messages(sid) if m.role == "user"]


async def test_twilio_reopens_a_dropped_socket_and_a_replayed_prompt_is_answered_once(db_url: str) -> None:
    call = "CA" + "p" * 32
    async with twilio_gateway(db_url, echo_delay_ms=60) as (g, _):
        answer = await incoming_call(g, call)
        assert 'applicationReconnect="true"' in answer.text
        params = relay_params(answer.text)
        first = "one two three four five six seven eight nine ten"
        async with relay_socket(g) as relay:
            await relay.send(setup_frame(call, params))
            await until_connected(g, params["sessionId"])
            await relay.prompt(first)
            await relay.recv()  # the reply is being said when the socket drops
        sid = params["sessionId"]
        stopped = await wait_event(g, sid, "call.interrupted")
        assert stopped.data["reason"] == "disconnected"
        # Twilio opens a new socket on its own (no action callback) and replays what it buffered:
        # the prompt the old socket had already delivered, then what the caller said meanwhile.
        async with relay_socket(g) as relay:
            await relay.send(setup_frame(call, params))
            await relay.prompt(first)
            await relay.prompt("are you there")
            text, _ = await relay.reply()
            assert text == "are you there"
            with pytest.raises(TimeoutError):
                await relay.recv(0.5)  # nothing more: the replay was not answered
        assert await _user_texts(g, sid) == [first, "are you there"]
        replies = [m for m in await g.runtime.store.messages(sid) if m.role == "assistant"]
        assert [bool((m.meta or {}).get("interrupted")) for m in replies] == [True, False]
        assert [e.session_id for e in await g.runtime.store.events_after(0, types=["session.started"])] == [
            sid
        ]


async def test_a_call_survives_a_gateway_restart_with_replayed_frames(db_url: str) -> None:
    port = free_port()
    call = "CA" + "q" * 32
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        settings = twilio_settings(db_url, fake, server={"shutdown_grace_seconds": 0}, echo_delay_ms=150)
        async with run_gateway(settings, env=ENV, port=port) as g:
            answer = await incoming_call(g, call)
            params = relay_params(answer.text)
            async with relay_socket(g) as relay:
                await relay.send(setup_frame(call, params))
                await until_connected(g, params["sessionId"])
                await relay.prompt("what are your opening hours")
                assert (await relay.recv())["token"] == "what "
                await g.stop()
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await relay.recv()
        sid = params["sessionId"]
        async with run_gateway(settings, env=ENV, port=port) as g:
            async with relay_socket(g) as relay:
                await relay.send(setup_frame(call, params))
                await relay.prompt("what are your opening hours")  # replayed by Twilio
                text, _ = await relay.reply()
                assert text == "what are your opening hours"  # answered once, by the restarted gateway
                with pytest.raises(TimeoutError):
                    await relay.recv(0.6)
            await wait_event(g, sid, "bot.message")  # said in full, then stored
            assert await _user_texts(g, sid) == ["what are your opening hours"]
            replies = [m.text for m in await g.runtime.store.messages(sid) if m.role == "assistant"]
            assert replies == ["what are your opening hours"]


# ------------------------------------------------------------- mid-call configuration


async def test_mid_call_configuration_from_the_api_the_agent_socket_and_the_python_client(
    db_url: str,
) -> None:
    async with (
        twilio_gateway(db_url, process=True) as (g, _),  # a process may steer its calls
        connected_call(g, "CA" + "k" * 32) as (relay, sid),
    ):
        async with g.client() as c:
            r = await c.post(
                f"/v1/calls/{sid}/configure",
                json={
                    "language": "es-ES",
                    "voice": "es-ES-Neural2-B",
                    "ttsProvider": "Google",
                    "interruptible": "speech",
                    "dtmfDetection": False,
                    "hints": ["Switchboard", "ConversationRelay"],
                },
            )
            assert r.status_code == 200, r.text
            assert await relay.recv() == {"type": "config", "interruptible": "speech", "dtmfDetection": False}
            assert await relay.recv() == {"type": "hints", "hints": "Switchboard,ConversationRelay"}
            assert await relay.recv() == {
                "type": "language",
                "ttsLanguage": "es-ES",
                "transcriptionLanguage": "es-ES",
                "voice": "es-ES-Neural2-B",
                "ttsProvider": "Google",
            }
            for bad in ({}, {"interruptible": "sometimes"}, {"hints": "a" * 101}, {"teleport": True}):
                refused = await c.post(f"/v1/calls/{sid}/configure", json=bad)
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_settings"
        session = await g.runtime.store.session(sid)
        assert session is not None
        assert session.meta["call"]["language"] == "es-ES"
        assert session.meta["call"]["config"]["voice"] == "es-ES-Neural2-B"
        # Twilio confirms with `configUpdated`: recorded on the call.
        await relay.send({"type": "configUpdated", "interruptible": "speech", "dtmfDetection": False})
        confirmed = await wait_event(g, sid, "call.configUpdated")
        assert confirmed.data["settings"] == {"interruptible": "speech", "dtmfDetection": False}

        gw = Gateway(g.url, api_key=ADMIN, reconnect_initial=0.05, reconnect_max=0.2, request_timeout=5.0)
        support = gw.agent("support")
        gw.start()
        try:
            await gw.wait_ready(10)
            await support.session(sid).configure_call(interruptible="none", voice="en-US-Neural2-F")
            assert await relay.recv() == {"type": "config", "interruptible": "none"}
            assert await relay.recv() == {"type": "language", "voice": "en-US-Neural2-F"}
            with pytest.raises(CommandError):
                await support.session(sid).configure_call(dtmfDetection="yes")
        finally:
            async with asyncio.timeout(10):
                await gw.close()
        configured = await g.runtime.store.events_after(0, session_id=sid, types=["call.configured"])
        assert [e.data["settings"].get("interruptible") for e in configured] == ["speech", "none"]
