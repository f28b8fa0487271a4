"""Phone calls end to end: signed voice webhooks, TwiML, the relay socket, call control, limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from channels.twilio.signature import sign
from gateway.client import Gateway, Session
from tests.conftest import ADMIN, SseReader, free_port, make_settings, run_gateway
from tests.fakes.openai_server import FakeOpenAI, error_reply, text_reply, tool_reply
from tests.fakes.twilio_server import FakeTwilio
from tests.twilio.helpers import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CALLER,
    ENV,
    SMS_NUMBER,
    signed_post,
    twilio_gateway,
    twilio_settings,
)
from tests.twilio.relay_client import (
    connected_call,
    incoming_call,
    relay_params,
    relay_socket,
    setup_frame,
)


async def events(g: Any, session_id: str | None = None, types: list[str] | None = None) -> list[Any]:
    return await g.runtime.store.events_after(0, session_id=session_id, types=types)


async def wait_event(g: Any, session_id: str | None, type_: str, timeout: float = 10, count: int = 1) -> Any:
    """The latest stored event of a type, once there are `count` of them."""
    async with asyncio.timeout(timeout):
        while True:
            found = await events(g, session_id, [type_])
            if len(found) >= count:
                return found[-1]
            await asyncio.sleep(0.03)


# ------------------------------------------------------------------ webhooks


async def test_incoming_call_answers_with_conversation_relay_twiml(sqlite_url: str) -> None:
    async with twilio_gateway(
        sqlite_url, greeting="Hi! How can I help?", phone={"language": "es-ES", "voice": "Polly.Lucia"}
    ) as (g, _):
        answer = await incoming_call(g, "CA" + "a" * 32)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/xml")
        xml = answer.text
        host = g.url.split("://", 1)[1]
        assert f'url="ws://{host}/twilio/relay"' in xml
        assert f'<Connect action="http://{host}/twilio/voice/action">' in xml
        assert 'welcomeGreeting="Hi! How can I help?"' in xml
        assert 'language="es-ES"' in xml and 'voice="Polly.Lucia"' in xml
        assert 'interruptible="any"' in xml and 'dtmfDetection="true"' in xml
        params = relay_params(xml)
        assert params["agent"] == "support" and params["direction"] == "inbound"
        assert params["sessionId"].startswith("call-")


async def test_voice_webhook_signature_and_bad_input(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _):
        assert (await incoming_call(g, "CA1", token="wrong-token")).status_code == 401
        assert (await incoming_call(g, "CA1", token=None)).status_code == 401
        missing = await signed_post(g, "/twilio/voice", {"AccountSid": ACCOUNT_SID, "From": CALLER})
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalid_webhook"
        unknown = await incoming_call(g, "CA2", to="+15550000000")
        assert unknown.status_code == 200 and "<Reject" in unknown.text
        assert [e.data["to"] for e in await events(g, types=["webhook.unroutable"])] == ["+15550000000"]
        async with httpx.AsyncClient() as c:
            r = await c.post(
                g.url + "/twilio/voice", content=b"{}", headers={"content-type": "application/json"}
            )
            assert r.status_code == 415
        assert await g.runtime.store.count_sessions() == 0


async def test_relay_handshake_needs_a_valid_signature(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _):
        for token in ("wrong", None):
            async with relay_socket(g, token=token) as relay:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await relay.recv(5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert await g.runtime.store.count_sessions() == 0


# ---------------------------------------------------------------- the e2e call


async def test_phone_call_end_to_end(db_url: str) -> None:
    """Incoming call -> TwiML -> setup -> two prompts streamed -> interrupt -> hang-up -> status -> ended
    (on SQLite and PostgreSQL)."""
    async with twilio_gateway(db_url, greeting="Hello, Acme here.", echo_delay_ms=60) as (g, _):
        async with g.client() as c, c.stream("GET", "/v1/events?tokens=true") as feed:
            sse = SseReader(feed)
            answer = await incoming_call(g, "CA" + "e" * 32)
            params = relay_params(answer.text)
            sid = params["sessionId"]
            async with relay_socket(g) as relay:
                await relay.send(setup_frame("CA" + "e" * 32, params))
                started = await _next_of(sse, "session.started")
                assert started["sessionId"] == sid and started["channel"] == "phone"
                assert started["contact"]["id"] == CALLER
                greeting = await _next_of(sse, "bot.message")
                assert greeting["greeting"] is True and greeting["text"] == "Hello, Acme here."

                await relay.prompt("one two three")
                text, frames = await relay.reply()
                assert text == "one two three"
                assert [f["last"] for f in frames] == [False] * (len(frames) - 1) + [True]
                assert all(f["token"] for f in frames[:-1])

                await relay.prompt("four five six")
                text, _ = await relay.reply()
                assert text == "four five six"

                # A long reply, interrupted after two tokens.
                await relay.prompt("alpha beta gamma delta epsilon zeta eta theta iota kappa")
                first = [await relay.recv(), await relay.recv()]
                assert all(f["type"] == "text" and not f["last"] for f in first)
                await relay.send(
                    {
                        "type": "interrupt",
                        "utteranceUntilInterrupt": "alpha",
                        "durationUntilInterruptMs": "640",
                    }
                )
                interrupted = await _next_of(sse, "call.interrupted")
                assert interrupted["spoken"] == "alpha" and interrupted["durationUntilInterruptMs"] == 640
                # The reply stored is what the caller heard, and it answered the prompt.
                messages = (await c.get(f"/v1/sessions/{sid}")).json()["messages"]
                assert [m["text"] for m in messages if m["role"] == "assistant"][-1] == "alpha"
                assert not any(m.get("pending") for m in messages)
                # Nothing more of the cut reply is said: the next reply is the next prompt's.
                await relay.prompt("lambda")
                assert (await relay.reply())[0] == "lambda"
            # The caller hangs up: Twilio closes the socket, then the status callback comes.
            status = await signed_post(
                g,
                "/twilio/voice/status",
                {
                    "CallSid": "CA" + "e" * 32,
                    "AccountSid": ACCOUNT_SID,
                    "CallStatus": "completed",
                    "CallDuration": "42",
                    "From": CALLER,
                    "To": SMS_NUMBER,
                },
            )
            assert status.status_code == 204
            ended = await _next_of(sse, "session.ended")
            assert ended["sessionId"] == sid and ended["reason"] == "hangup" and ended["duration"] == 42
        session = await g.runtime.store.session(sid)
        assert session is not None and not session.active


async def post_action(g: Any, call_sid: str, session_status: str, **more: str) -> httpx.Response:
    """Twilio's `<Connect action>` callback after the relay session of a call in progress."""
    form = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "CallStatus": "in-progress",
        "SessionStatus": session_status,
        **more,
    }
    return await signed_post(g, "/twilio/voice/action", form)


async def _next_of(sse: SseReader, event: str) -> dict[str, Any]:
    while True:
        frame = await sse.next_event()
        if frame.get("event") == event:
            data: dict[str, Any] = frame["json"]
            return data


async def test_dtmf_errors_and_malformed_frames_are_recorded_and_the_call_goes_on(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "d" * 32) as (relay, sid):
        await relay.send("not json")
        await relay.send({"no": "type"})
        await relay.send({"type": "prompt", "voicePrompt": 42})
        await relay.send({"type": "info", "whatever": True})  # a newer type: ignored
        await relay.send({"type": "dtmf", "digit": "5"})
        await relay.send({"type": "error", "description": "TTS provider hiccup"})
        await relay.prompt("still here")
        assert (await relay.reply())[0] == "still here"
        assert (await wait_event(g, sid, "call.dtmf")).data["digit"] == "5"
        codes = [e.data["code"] for e in await events(g, sid, ["session.error"])]
        assert codes.count("bad_relay_frame") == 3 and "relay_error" in codes


async def test_partial_prompts_make_one_turn(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "p" * 32) as (relay, sid):
        await relay.prompt("I would", last=False)
        await relay.prompt("I would like", last=False)
        await relay.prompt("I would like a taxi")
        assert (await relay.reply())[0] == "I would like a taxi"
        users = [e.data["text"] for e in await events(g, sid, ["user.message"])]
        assert users == ["I would like a taxi"]


# ---------------------------------------------------------------- call control


async def test_hang_up_from_the_api(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "h" * 32) as (relay, sid):
        async with g.client() as c:
            r = await c.post(f"/v1/calls/{sid}/hangup")
            assert r.status_code == 200, r.text
        end = await relay.recv()
        assert end["type"] == "end" and json.loads(end["handoffData"])["action"] == "hangup"
        ended = await wait_event(g, sid, "session.ended")
        assert ended.data["reason"] == "closed"
        action = await post_action(g, "CA" + "h" * 32, "ended", HandoffData=end["handoffData"])
        assert "<Hangup />" in action.text


async def test_forward_digits_and_language(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "f" * 32) as (relay, sid):
        async with g.client() as c:
            assert (await c.post(f"/v1/calls/{sid}/digits", json={"digits": "12w#"})).status_code == 200
            assert await relay.recv() == {"type": "sendDigits", "digits": "12w#"}
            assert (await c.post(f"/v1/calls/{sid}/language", json={"language": "es-ES"})).status_code == 200
            assert await relay.recv() == {
                "type": "language",
                "ttsLanguage": "es-ES",
                "transcriptionLanguage": "es-ES",
            }
            bad = await c.post(f"/v1/calls/{sid}/digits", json={"digits": "12; DROP"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_digits"
            assert (await c.post(f"/v1/calls/{sid}/teleport")).status_code == 400
            assert (await c.post("/v1/calls/call-nope/hangup")).status_code == 404
            assert (await c.post(f"/v1/calls/{sid}/forward", json={"to": "+15558675309"})).status_code == 200
        end = await relay.recv()
        assert end["type"] == "end"
        assert json.loads(end["handoffData"]) == {"action": "forward", "to": "+15558675309"}
        assert (await wait_event(g, sid, "call.forwarded")).data["to"] == "+15558675309"
        ended = await wait_event(g, sid, "session.ended")
        assert ended.data["forwardedTo"] == "+15558675309"
        action = await post_action(g, "CA" + "f" * 32, "ended", HandoffData=end["handoffData"])
        assert "<Dial>+15558675309</Dial>" in action.text


async def test_human_message_is_spoken_on_the_call(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url) as (g, _), connected_call(g, "CA" + "m" * 32) as (relay, sid):
        async with g.client() as c:
            assert (await c.post(f"/v1/sessions/{sid}/pause")).status_code == 200
            await relay.prompt("is anyone there")
            r = await c.post(f"/v1/sessions/{sid}/messages", json={"text": "Hi, this is Ana from support."})
            assert r.status_code in (200, 201, 202), r.text
        frame = await relay.recv()
        assert frame == {"type": "text", "token": "Hi, this is Ana from support.", "last": True}


async def test_agent_tools_end_and_transfer_the_call(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script(
            [
                tool_reply([("c1", "transferToHuman", '{"reason": "wants a person"}')]),
                text_reply("Connecting ", "you now."),
            ]
        )
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "phone": {"transfer_to": "+15558675309", "end_call_tool": True},
        }
        async with (
            twilio_gateway(sqlite_url, **agent) as (g, _),
            connected_call(g, "CA" + "t" * 32) as (relay, sid),
        ):
            await relay.prompt("a human please")
            text, _ = await relay.reply()
            assert text == "Connecting you now."
            end = await relay.recv(5)
            assert end["type"] == "end" and json.loads(end["handoffData"])["to"] == "+15558675309"
            assert (await wait_event(g, sid, "session.ended")).data["reason"] == "closed"
            tools = [t["function"]["name"] for t in llm.bodies[0]["tools"]]
            assert set(tools) == {"transferToHuman", "endCall"}


async def test_call_tools_are_not_offered_off_the_phone(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("ok")])
        agent = {
            "answer": "llm",
            "llm": {"base_url": llm.url, "model": "m"},
            "phone": {"end_call_tool": True},
        }
        async with twilio_gateway(sqlite_url, **agent) as (g, _), g.client() as c:
            r = await c.post("/v1/agents/support/messages", json={"text": "hi"})
            assert r.status_code == 200
            assert "tools" not in llm.bodies[0]


# ---------------------------------------------------------------- limits


async def test_idle_call_is_warned_then_ended(sqlite_url: str) -> None:
    phone = {"idle_timeout_seconds": 0.6, "idle_warning_seconds": 0.3, "idle_grace_seconds": 0.3}
    async with (
        twilio_gateway(sqlite_url, phone=phone) as (g, _),
        connected_call(g, "CA" + "i" * 32) as (relay, sid),
    ):
        end = await relay.recv(5)
        assert end["type"] == "end"
        warnings = [e.data for e in await events(g, sid, ["session.idleWarning"])]
        assert len(warnings) == 2 and warnings[-1]["final"] is True
        assert warnings[0]["idleTimeoutSeconds"] == 0.6
        assert (await wait_event(g, sid, "session.ended")).data["reason"] == "idle_timeout"


async def test_speech_resets_the_idle_clock_and_max_duration_ends_the_call(sqlite_url: str) -> None:
    phone = {"idle_timeout_seconds": 0.8, "idle_warning_seconds": 0, "max_duration_seconds": 1.5}
    async with (
        twilio_gateway(sqlite_url, phone=phone) as (g, _),
        connected_call(g, "CA" + "x" * 32) as (relay, sid),
    ):
        for word in ("one", "two", "three"):
            await asyncio.sleep(0.4)
            await relay.prompt(word)
            assert (await relay.reply())[0] == word
        end = await relay.recv(5)
        assert end["type"] == "end"
        assert (await wait_event(g, sid, "session.ended")).data["reason"] == "max_duration"


# ------------------------------------------------------- drops and reconnects


async def test_socket_drop_mid_reply_stores_it_interrupted_and_the_call_reconnects(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url, echo_delay_ms=80) as (g, _):
        call = "CA" + "r" * 32
        async with connected_call(g, call) as (relay, sid):
            await relay.prompt("one two three four five six seven eight nine ten")
            await relay.recv()
            await relay.recv()
        # The socket is gone mid-reply: the reply is stored as far as it went, marked interrupted.
        stopped = await wait_event(g, sid, "call.interrupted")
        assert stopped.data["reason"] == "disconnected"
        said = stopped.data["spoken"]
        assert said.startswith("one two") and "ten" not in said
        messages = await g.runtime.store.messages(sid)
        assert not any(m.pending for m in messages)
        action = await post_action(g, call, "failed", ErrorCode="64105")
        assert "<ConversationRelay" in action.text and relay_params(action.text)["sessionId"] == sid
        assert "welcomeGreeting" not in action.text
        async with relay_socket(g) as relay:
            await relay.send(setup_frame(call, relay_params(action.text)))
            await relay.prompt("back again")
            assert (await relay.reply())[0] == "back again"
        assert [e.session_id for e in await events(g, types=["session.started"])] == [sid]


async def test_a_dropped_call_that_never_comes_back_ends(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url, phone={"relay_reconnect_seconds": 0.2}) as (g, _):
        async with connected_call(g, "CA" + "z" * 32) as (_relay, sid):
            pass
        assert (await wait_event(g, sid, "session.ended")).data["reason"] == "hangup"


# ------------------------------------------------------------- ringing


async def test_call_ringing_lets_an_agent_process_reject(sqlite_url: str) -> None:
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        settings = twilio_settings(sqlite_url, fake)
        support = settings.agents["support"].model_dump()
        support["twilio"] = [{**n, "ringing": True} for n in support["twilio"]]
        settings = settings.model_copy(
            update={
                "agents": {
                    **settings.agents,
                    "support": type(settings.agents["support"]).model_validate(support),
                }
            }
        )
        async with run_gateway(settings, env=ENV) as g:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with websockets.connect(f"{g.ws_url}/v1/agents/ws", additional_headers=headers) as proc:
                await proc.send(json.dumps({"event": "agent.register", "agent_id": "support", "config": {}}))
                await _proc_event(proc, "agent.registered")
                answer = asyncio.create_task(incoming_call(g, "CA" + "b" * 32))
                ringing = await _proc_event(proc, "call.ringing")
                assert ringing["callId"] == "CA" + "b" * 32 and ringing["from"] == CALLER
                await proc.send(
                    json.dumps({"event": "call.reject", "call_id": ringing["callId"], "reason": "busy"})
                )
                response = await answer
                assert '<Reject reason="busy" />' in response.text
                # Silence accepts (after the timeout).
                answer = asyncio.create_task(incoming_call(g, "CA" + "c" * 32))
                await _proc_event(proc, "call.ringing")
                assert "<ConversationRelay" in (await answer).text


async def _proc_event(ws: Any, name: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("event") == name:
                return dict(frame)


# -------------------------------------------------------------- outbound


async def test_outbound_call_places_relay_twiml_and_no_answer_ends_it(sqlite_url: str) -> None:
    port = free_port()
    server = {"public_url": f"http://127.0.0.1:{port}"}
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        async with run_gateway(twilio_settings(sqlite_url, fake, server=server), env=ENV, port=port) as g:
            async with g.client() as c:
                fake.fail_next(1, 429, 20429, "Too Many Requests", on="Calls", headers={"retry-after": "0"})
                r = await c.post(
                    "/v1/calls",
                    json={
                        "agent": "support",
                        "to": "+14155551234",
                        "from": SMS_NUMBER,
                        "greeting": "Hi, a reminder from Acme.",
                        "language": "es-ES",
                        "metadata": {"appointmentId": "a1"},
                    },
                )
                assert r.status_code == 201, r.text
                body = r.json()
                sid = body["sessionId"]
                assert sid.startswith("call-") and body["callSid"].startswith("CA")
                assert len(fake.calls) == 1
                placed = fake.calls[0]
                assert placed["To"] == ["+14155551234"] and placed["From"] == [SMS_NUMBER]
                assert 'welcomeGreeting="Hi, a reminder from Acme."' in placed["Twiml"][0]
                assert 'language="es-ES"' in placed["Twiml"][0]
                assert relay_params(placed["Twiml"][0])["sessionId"] == sid
                status_url = placed["StatusCallback"][0]
                assert status_url == f"http://127.0.0.1:{port}/twilio/voice/status?session={sid}"
                started = (await events(g, sid, ["session.started"]))[0]
                assert started.data["direction"] == "outbound"
                assert started.data["metadata"]["appointmentId"] == "a1"
                params = {"CallSid": body["callSid"], "AccountSid": ACCOUNT_SID, "CallStatus": "no-answer"}
                h = {
                    "content-type": "application/x-www-form-urlencoded",
                    "x-twilio-signature": sign(AUTH_TOKEN, status_url, params),
                }
                async with httpx.AsyncClient() as plain:
                    assert (await plain.post(status_url, data=params, headers=h)).status_code == 204
                assert (await wait_event(g, sid, "session.ended")).data["reason"] == "no_answer"

                # Twilio refuses the number: a clear error, and the session ends `failed`.
                fake.fail_next(1, 400, 21211, "The 'To' number is not a valid phone number.", on="Calls")
                bad = await c.post(
                    "/v1/calls", json={"agent": "support", "to": "+14155550000", "from": SMS_NUMBER}
                )
                assert bad.status_code == 502 and bad.json()["error"]["code"] == "twilio_error"
                assert len(fake.calls) == 1
                failed = [e for e in await events(g, types=["session.ended"]) if e.data["reason"] == "failed"]
                assert failed and failed[0].data["error"]["code"] == 21211
                assert (await c.post("/v1/calls", json={"agent": "support", "to": "12"})).status_code == 400


async def test_outbound_call_is_answered_and_greeting_stored(sqlite_url: str) -> None:
    port = free_port()
    server = {"public_url": f"http://127.0.0.1:{port}"}
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        async with run_gateway(twilio_settings(sqlite_url, fake, server=server), env=ENV, port=port) as g:
            async with g.client() as c:
                # The caller's metadata never collides with the gateway's own call fields.
                weird = {"answeredAt": "soon", "reconnects": "many", "callSid": 5, "number": []}
                r = await c.post(
                    "/v1/calls",
                    json={"agent": "support", "to": "+14155551234", "greeting": "Hello!", "metadata": weird},
                )
                assert r.status_code == 201, r.text
            sid, call_sid = r.json()["sessionId"], r.json()["callSid"]
            params = relay_params(fake.calls[0]["Twiml"][0])
            async with relay_socket(g) as relay:
                await relay.send(
                    setup_frame(
                        call_sid, params, from_=SMS_NUMBER, to="+14155551234", direction="outbound-api"
                    )
                )
                await relay.prompt("who is this")
                assert (await relay.reply())[0] == "who is this"
            # The caller hangs up right after the reply was said: it is still stored in full.
            await wait_event(g, sid, "bot.message", count=2)
            messages = await g.runtime.store.messages(sid)
            assert [m.text for m in messages] == ["Hello!", "who is this", "who is this"]
            action = await post_action(g, call_sid, "failed")
            assert relay_params(action.text)["sessionId"] == sid  # reconnects despite the metadata
            session = await g.runtime.store.session(sid)
            assert session is not None
            assert {k: session.meta[k] for k in weird} == weird
            assert session.meta["call"]["callSid"] == call_sid and session.meta["call"]["reconnects"] == 1


async def test_gateway_restart_mid_call_reconnects_and_answers(db_url: str) -> None:
    """The gateway stops mid-reply; Twilio's action callback reconnects the call to the new process,
    which answers the prompt that was left unanswered."""
    port = free_port()
    call = "CA" + "s" * 32
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        settings = twilio_settings(db_url, fake, server={"shutdown_grace_seconds": 0}, echo_delay_ms=150)
        async with run_gateway(settings, env=ENV, port=port) as g:
            async with connected_call(g, call) as (relay, sid):
                await relay.prompt("one two three four five six")
                assert (await relay.recv())["token"] == "one "
                await g.stop()
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await relay.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        async with run_gateway(settings, env=ENV, port=port) as g:
            pending = [m.text for m in await g.runtime.store.messages(sid) if m.pending]
            assert pending == ["one two three four five six"]  # not answered into the void on start
            action = await post_action(g, call, "failed")
            params = relay_params(action.text)
            assert params["sessionId"] == sid
            async with relay_socket(g) as relay:
                await relay.send(setup_frame(call, params))
                assert (await relay.reply())[0] == "one two three four five six"
            await wait_event(g, sid, "bot.message")
            replies = [m.text for m in await g.runtime.store.messages(sid) if m.role == "assistant"]
            assert replies == ["one two three four five six"]


async def test_calls_nobody_closed_are_swept(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.limits.CALL_SLACK_SECONDS", 0)
    port = free_port()
    server = {"public_url": f"http://127.0.0.1:{port}"}
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        settings = twilio_settings(sqlite_url, fake, server=server, phone={"max_duration_seconds": 0.3})
        async with run_gateway(settings, env=ENV, port=port) as g, g.client() as c:
            r = await c.post("/v1/calls", json={"agent": "support", "to": "+14155551234"})
            sid = r.json()["sessionId"]  # never answered, and no status callback ever comes
            assert (await wait_event(g, sid, "session.ended")).data["reason"] == "max_duration"


async def test_python_client_screens_calls_and_transfers_from_a_tool(sqlite_url: str) -> None:
    """The product docs' patterns with gateway.client: reject a blacklisted caller on
    `call.ringing`, and a `transferToHuman` tool of the process that forwards the call."""
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake, FakeOpenAI() as llm:
        llm.script(
            [
                tool_reply([("c1", "transferToHuman", "{}")]),
                text_reply("Connecting you now."),
            ]
        )
        settings = twilio_settings(sqlite_url, fake)
        numbers = [{**n, "ringing": True} for n in settings.agents["support"].model_dump()["twilio"]]
        agents = {
            **{k: v.model_dump() for k, v in settings.agents.items()},
            # gateway.toml defines how `support` answers; the process serves its tool and
            # screens its calls (a process never redefines a gateway.toml agent).
            "support": {
                **settings.agents["support"].model_dump(),
                "twilio": numbers,
                "answer": "llm",
                "llm": {"base_url": llm.url, "model": "m"},
            },
        }
        settings = type(settings).from_dict({"server": settings.server.model_dump(), "agents": agents})
        async with run_gateway(settings, env=ENV) as g:
            gw = Gateway(g.url, api_key=ADMIN, reconnect_initial=0.05, reconnect_max=0.2, request_timeout=5.0)
            support = gw.agent("support", llm={"base_url": llm.url, "model": "m"})
            blacklist = {"+15550009999"}

            @support.on("call.ringing")
            async def screen(event: dict[str, Any]) -> None:
                if event["from"] in blacklist:
                    await support.reject_call(event["callId"], "busy")
                else:
                    await support.accept_call(event["callId"])

            @support.tool
            async def transferToHuman(session: Session) -> dict[str, bool]:
                """Escalate to a human colleague."""
                await session.forward("+15558675309", after_reply=True)
                return {"transferred": True}

            gw.start()
            try:
                await gw.wait_ready(10)
                spam = await incoming_call(g, "CA" + "1" * 32, from_="+15550009999")
                assert '<Reject reason="busy" />' in spam.text
                async with connected_call(g, "CA" + "2" * 32) as (relay, sid):
                    await relay.prompt("let me talk to a person")
                    assert (await relay.reply())[0] == "Connecting you now."
                    end = await relay.recv()
                    assert json.loads(end["handoffData"]) == {"action": "forward", "to": "+15558675309"}
                assert (await wait_event(g, sid, "session.ended")).data["forwardedTo"] == "+15558675309"
            finally:
                async with asyncio.timeout(10):
                    await gw.close()


async def test_dev_routes_send_a_testers_calls_to_the_dev_agent(sqlite_url: str) -> None:
    async with twilio_gateway(sqlite_url, dev_routes={CALLER: "dev-berna-support"}) as (g, _):
        params = relay_params((await incoming_call(g, "CA" + "7" * 32)).text)
        assert params["agent"] == "dev-berna-support"
        other = relay_params((await incoming_call(g, "CA" + "8" * 32, from_="+15551112222")).text)
        assert other["agent"] == "support"


async def test_a_call_without_a_relay_is_changed_through_the_rest_api(sqlite_url: str) -> None:
    port = free_port()
    server = {"public_url": f"http://127.0.0.1:{port}"}
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        async with run_gateway(twilio_settings(sqlite_url, fake, server=server), env=ENV, port=port) as g:
            async with g.client() as c:
                first = (await c.post("/v1/calls", json={"agent": "support", "to": "+14155551234"})).json()
                r = await c.post(f"/v1/calls/{first['sessionId']}/hangup")
                assert r.status_code == 200, r.text
                assert fake.call_updates == [(first["callSid"], {"Status": ["completed"]})]
                assert (await wait_event(g, first["sessionId"], "session.ended")).data["reason"] == "closed"

                second = (await c.post("/v1/calls", json={"agent": "support", "to": "+14155551235"})).json()
                r = await c.post(f"/v1/calls/{second['sessionId']}/forward", json={"to": "+15558675309"})
                assert r.status_code == 200, r.text
                sid, form = fake.call_updates[-1]
                assert sid == second["callSid"] and "<Dial>+15558675309</Dial>" in form["Twiml"][0]

                third = (await c.post("/v1/calls", json={"agent": "support", "to": "+14155551236"})).json()
                fake.fail_next(1, 404, 20404, "The requested resource was not found", on="Calls/")
                r = await c.post(f"/v1/calls/{third['sessionId']}/hangup")
                assert r.status_code == 502 and r.json()["error"]["code"] == "twilio_error"
                session = await g.runtime.store.session(third["sessionId"])
                assert session is not None and session.active  # nothing pretended: the call may still be up


async def test_a_failed_turn_is_not_silence(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([error_reply(500)])
        agent = {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}}
        async with (
            twilio_gateway(sqlite_url, **agent) as (g, _),
            connected_call(g, "CA" + "5" * 32) as (relay, sid),
        ):
            await relay.prompt("hello?")
            frame = await relay.recv()
            assert frame == {
                "type": "text",
                "token": "Sorry, I could not answer that. Could you say it again?",
                "last": True,
            }
            assert (await wait_event(g, sid, "session.error")).data["code"] == "agent_error"


async def test_a_returning_caller_is_remembered_until_the_old_call_is_erased(sqlite_url: str) -> None:
    async with FakeOpenAI() as llm:
        llm.script([text_reply("Hi Ada."), text_reply("Welcome back, Ada."), text_reply("Who are you?")])
        agent = {"answer": "llm", "llm": {"base_url": llm.url, "model": "m"}}
        async with twilio_gateway(sqlite_url, **agent) as (g, _):
            async with connected_call(g, "CA" + "3" * 32) as (relay, first):
                await relay.prompt("my name is Ada")
                await relay.reply()
                await wait_event(g, first, "bot.message")
            async with g.client() as c:
                assert (await c.post(f"/v1/calls/{first}/hangup")).status_code == 200
                async with connected_call(g, "CA" + "4" * 32) as (relay, _second):
                    await relay.prompt("hello again")
                    assert (await relay.reply())[0] == "Welcome back, Ada."
                    assert (await c.delete(f"/v1/sessions/{first}")).status_code == 200
                    await relay.prompt("do you know me")
                    assert (await relay.reply())[0] == "Who are you?"

    def said(body: dict[str, Any]) -> list[str]:
        return [m["content"] for m in body["messages"] if m["role"] != "system"]

    assert said(llm.bodies[1]) == ["my name is Ada", "Hi Ada.", "hello again"]
    assert said(llm.bodies[2]) == ["hello again", "Welcome back, Ada.", "do you know me"]


async def test_the_phone_agent_example(sqlite_url: str) -> None:
    from tests.client.test_client_gateway import load_example

    example = load_example("phone_agent")
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        numbers = [{"number": SMS_NUMBER, "api_base_url": fake.base_url}]  # the process turns screening on
        agents = {
            "receptionist": {
                "answer": "process",
                "greeting": "Thanks for calling Acme. How can I help?",
                "twilio": numbers,
            }
        }
        async with run_gateway(make_settings(sqlite_url, agents=agents), env=ENV) as g:
            gw = Gateway(g.url, api_key=ADMIN, reconnect_initial=0.05, reconnect_max=0.2, request_timeout=5.0)
            example.build(gw, blocked=frozenset({"+15550009999"}))
            gw.start()
            try:
                await gw.wait_ready(10)
                busy = await incoming_call(g, "CA" + "b" * 32, from_="+15550009999")
                assert '<Reject reason="busy" />' in busy.text
                answer = await incoming_call(g, "CA" + "c" * 32)
                assert 'welcomeGreeting="Thanks for calling Acme. How can I help?"' in answer.text
                params = relay_params(answer.text)
                async with relay_socket(g) as relay:
                    await relay.send(setup_frame("CA" + "c" * 32, params))
                    await relay.prompt("what are your opening hours")
                    text, frames = await relay.reply()
                    assert text.startswith("You said: what are your opening hours.") and len(frames) > 3
                    await relay.prompt("can I talk to a person please")
                    assert (await relay.reply())[0] == "Sure, I'm connecting you to a colleague now."
                    end = await relay.recv()
                    assert json.loads(end["handoffData"]) == {"action": "forward", "to": "+15558675309"}
            finally:
                async with asyncio.timeout(10):
                    await gw.close()
