"""Phone calls through Twilio ConversationRelay: webhooks, the relay socket, call control.

    POST /twilio/voice          incoming call -> TwiML <Connect><ConversationRelay> (or <Reject/>)
    WS   /twilio/relay          the call's conversation (see relay.py)
    POST /twilio/voice/action   <Connect action>: after the relay ends -> <Dial>, <Hangup/> or reconnect
    POST /twilio/voice/status   call status callbacks -> session.ended with the call's reason
    POST /v1/calls              place an outbound call
    POST /v1/calls/{id}/{hangup|forward|digits|language}

Every Twilio request (and the relay handshake) is checked against X-Twilio-Signature
before anything is stored. A call's session is `call-…`; its endpoint is
`twilio-voice:<CallSid>`, which the status callback finds it by.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Collection, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels.twilio import relay_protocol as rp
from channels.twilio import twiml
from channels.twilio.accounts import TWILIO_FORM, VOICE, Binding, TwilioAccounts, clean_form, read_form
from channels.twilio.errors import TwilioError
from channels.twilio.relay import RelayConnection
from channels.twilio.signature import matching_token, public_url
from gateway import ids
from gateway.access import Access
from gateway.agents.factory import AgentFactory
from gateway.api.models import CallControlRequest, CallRequest
from gateway.api.operation import ApiRoute, parse_body
from gateway.bus.facade import Bus
from gateway.calls import CALL_ACTIONS
from gateway.control import Control
from gateway.conversations import ConversationService
from gateway.directory import AgentDirectory
from gateway.errors import AgentError, BadRequest, Conflict, GatewayError, NotFound, Unauthorized
from gateway.events import ContactRef, Event, now_ms
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.records import SessionRecord
from gateway.store.sql import Store
from gateway.types import Channel, EventType

log = logging.getLogger("gateway.twilio.voice")

E164 = re.compile(r"^\+[1-9][0-9]{4,15}$")
DIGITS = re.compile(r"^[0-9w#*]{1,64}$")
LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
UNROUTABLE = "_unroutable"
# CallStatus (final ones) -> session.ended reason.
END_REASONS = {
    "completed": "hangup",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}
MAX_RECONNECTS = 3
CALL_CONFIGURED = "call.configured"
# Control orders (gateway/control.py) for the instance that holds a call.
CALL_ORDER = "call"
RINGING = "call.decide"
PROCESS_HERE = "agent.connected"  # is this agent's process connected to you? (ringing)
# A caller waits while instances are asked: the answer takes a Redis round trip; silence
# after this long means no instance has the process (the call is accepted, as alone), or
# no instance has the call ringing (the decision is refused, `unknown_call`).
PRESENCE_SECONDS = 0.5
CALL_KEY = "call"  # session.meta["call"]: CallSid, numbers, answer time, reconnects, language
CREATE_CALL_ATTEMPTS = 3


def _xml(body: str) -> Response:
    return Response(body, media_type=twiml.XML)


class TwilioVoice:
    def __init__(
        self,
        accounts: TwilioAccounts,
        *,
        access: Access,
        agents: AgentFactory,
        bus: Bus,
        directory: AgentDirectory,
        metrics: Metrics,
        service: ConversationService,
        settings: Settings,
        stopping: asyncio.Event,
        store: Store,
        remote: Control | None = None,
    ) -> None:
        # Several instances: orders for calls whose relay (or ringing) is elsewhere.
        self.remote = remote if remote is not None else Control(bus, shared=False)
        self.remote.on(CALL_ORDER, self._call_order)
        self.remote.on(RINGING, self._ringing_order)
        self.remote.on(PROCESS_HERE, self._process_order)
        self.access = access
        self.agents = agents
        self.bus = bus
        self.directory = directory
        self.metrics = metrics
        self.service = service
        self.settings = settings
        self.stopping = stopping
        self.store = store
        self.accounts = accounts
        self.live: dict[str, RelayConnection] = {}
        self._ringing: dict[str, tuple[str, asyncio.Future[tuple[bool, str | None]]]] = {}
        self._dropped: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/twilio/voice",
                self.incoming,
                method="POST",
                summary="Twilio incoming call: answers <Connect><ConversationRelay> TwiML (or <Reject/>)",
                raw_body=TWILIO_FORM,
                secured=False,
                produces="text/xml",
                errors=(400, 401, 413, 415),
            ),
            ApiRoute(
                "/twilio/voice/action",
                self.action,
                method="POST",
                summary="<Connect action> callback: <Dial> after a forward, <Hangup/>, or a relay reconnect",
                raw_body=TWILIO_FORM,
                secured=False,
                produces="text/xml",
                errors=(400, 401, 413, 415),
            ),
            ApiRoute(
                "/twilio/voice/status",
                self.status,
                method="POST",
                summary="Twilio call status callback: final statuses end the call's session",
                raw_body=TWILIO_FORM,
                secured=False,
                ok=204,
                errors=(400, 401, 413, 415),
            ),
            WebSocketRoute("/twilio/relay", self.relay),
            ApiRoute(
                "/v1/calls",
                self.dial,
                method="POST",
                summary="Place an outbound phone call through Twilio",
                body=CallRequest,
                ok=201,
                errors=(401, 403, 404, 409, 413, 415, 429, 502),
            ),
            ApiRoute(
                "/v1/calls/{session_id}/{action}",
                self.control_route,
                method="POST",
                summary="Steer a live call: hangup, forward {to}, digits {digits}, language {language}",
                body=CallControlRequest,
                body_required=False,
                errors=(401, 404, 409, 413, 415, 502),
            ),
        ]

    # ------------------------------------------------------------ webhooks

    async def _signed_form(self, request: Request) -> Mapping[str, str]:
        form, _token = await self._signed(request)
        return form

    async def _signed(self, request: Request) -> tuple[Mapping[str, str], str]:
        """The form and the auth token that signed it; 401 (nothing stored) otherwise."""
        form = await read_form(request)
        url = public_url(request.url, request.headers, self.settings.server)
        tokens = self.accounts.tokens_for(form.get("AccountSid"))
        token = matching_token(url, form, request.headers.get("x-twilio-signature"), tokens)
        if token is None:
            log.warning("refused a Twilio request to %s: invalid or missing X-Twilio-Signature", url)
            raise Unauthorized("invalid or missing X-Twilio-Signature", code="invalid_signature")
        return clean_form(form), token

    def _base(self, request: Request) -> tuple[str, str]:
        """(https base, wss base) of the gateway as Twilio reaches it."""
        url = public_url(request.url, request.headers, self.settings.server)
        scheme, rest = url.split("://", 1)
        host = rest.split("/", 1)[0]
        return f"{scheme}://{host}", f"{'wss' if scheme == 'https' else 'ws'}://{host}"

    def _relay_twiml(
        self,
        base: tuple[str, str],
        *,
        agent_id: str,
        session_id: str,
        direction: str,
        greeting: str | None,
        language: str | None = None,
    ) -> str:
        http, ws = base
        params = {"sessionId": session_id, "agent": agent_id, "direction": direction}
        return twiml.relay(
            relay_url=f"{ws}/twilio/relay",
            action_url=f"{http}/twilio/voice/action",
            phone=self.directory.get(agent_id).phone,
            greeting=greeting,
            parameters=params,
            language=language,
        )

    async def incoming(self, request: Request) -> Response:
        form, token = await self._signed(request)
        call_sid, caller, called = form.get("CallSid"), form.get("From"), form.get("To")
        if not call_sid or not caller or not called:
            raise BadRequest("CallSid, From and To are required", code="invalid_webhook")
        binding = self.accounts.get(called)
        if binding is None or binding.config.whatsapp:
            log.warning("call %s to unconfigured number %s: rejected", call_sid, called)
            await self.service.record_events(
                [
                    Event(
                        type="webhook.unroutable",
                        agent=UNROUTABLE,
                        channel="phone",
                        data={"callSid": call_sid, "from": caller, "to": called},
                    )
                ]
            )
            return _xml(twiml.reject("rejected"))
        if binding.token != token:
            # Another account's token signed a call to this number: it is not theirs to route.
            raise Unauthorized("the signing account does not own this number", code="invalid_signature")
        agent_id = self.accounts.route(binding, caller)
        config = self.directory.get(agent_id)
        if binding.config.ringing or config.phone.ringing:
            accepted, reason = await self._screen(agent_id, call_sid, caller, called)
            if not accepted:
                return _xml(twiml.reject(reason or "busy"))
        return _xml(
            self._relay_twiml(
                self._base(request),
                agent_id=agent_id,
                session_id=ids.session_id(Channel.PHONE),
                direction="inbound",
                greeting=config.greeting,
            )
        )

    async def _screen(
        self, agent_id: str, call_sid: str, caller: str, called: str
    ) -> tuple[bool, str | None]:
        """`call.ringing`: a connected agent process may accept or reject; silence accepts."""
        if self.agents.hub.current(agent_id) is None and not await self._process_elsewhere(agent_id):
            return True, None  # nobody to ask: auto-accept at once
        future: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()
        self._ringing[call_sid] = (agent_id, future)
        data = {"callId": call_sid, "from": caller, "to": called}
        try:
            await self.service.record_events(
                [Event(type=EventType.CALL_RINGING, agent=agent_id, channel="phone", data=data)]
            )
            timeout = self.directory.get(agent_id).phone.ringing_timeout_seconds
            try:
                accepted, reason = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                log.info("call %s: no ringing decision in %.1fs; accepted", call_sid, timeout)
                return True, None
        finally:
            self._ringing.pop(call_sid, None)
        if not accepted:
            await self.service.record_events(
                [
                    Event(
                        type="call.rejected",
                        agent=agent_id,
                        channel="phone",
                        data={**data, "reason": reason or "busy"},
                    )
                ]
            )
        return accepted, reason

    async def decide(self, call_id: str, accept: bool, reason: str | None, agents: Collection[str]) -> bool:
        if self._decide_here(call_id, accept, reason, agents):
            return True
        # Several instances: the call may be ringing on the one its webhook reached.
        args = {"accept": accept, "reason": reason, "agents": sorted(agents)}
        return await self.remote.ask(RINGING, call_id, args, wait_seconds=PRESENCE_SECONDS) is not None

    def _decide_here(self, call_id: str, accept: bool, reason: str | None, agents: Collection[str]) -> bool:
        agent_id, future = self._ringing.get(call_id, ("", None))
        if future is None or future.done() or agent_id not in agents:
            return False
        future.set_result((accept, reason))
        return True

    async def _process_elsewhere(self, agent_id: str) -> bool:
        """Several instances: is the agent's process connected to another instance?"""
        return await self.remote.ask(PROCESS_HERE, agent_id, wait_seconds=PRESENCE_SECONDS) is not None

    async def _process_order(self, agent_id: str, _args: dict[str, Any]) -> dict[str, Any] | None:
        return {} if self.agents.hub.current(agent_id) is not None else None

    async def _ringing_order(self, call_id: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Another instance's agent process answered a call ringing here (gateway/control.py)."""
        agents = [a for a in args.get("agents") or () if isinstance(a, str)]
        reason = args.get("reason") if isinstance(args.get("reason"), str) else None
        return {} if self._decide_here(call_id, args.get("accept") is True, reason, agents) else None

    async def _call_order(self, session_id: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Another instance was asked to steer a call whose relay socket is here."""
        if session_id not in self.live:
            return None
        action, clean = str(args.get("action")), args.get("args")
        return await self.control(
            session_id,
            action,
            clean if isinstance(clean, dict) else {},
            after_reply=args.get("after_reply") is True,
            here=True,
        )

    async def action(self, request: Request) -> Response:
        """Twilio asks what to do once the relay session is over."""
        form = await self._signed_form(request)
        call_sid = form.get("CallSid", "")
        session = await self._call_session(call_sid, request.query_params.get("session"))
        handoff: dict[str, Any] = {}
        raw = form.get("HandoffData")
        if raw:
            try:
                parsed = json.loads(raw)
                handoff = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                log.warning("call %s: HandoffData is not JSON: %.100r", call_sid, raw)
        if handoff.get("action") == "forward" and isinstance(handoff.get("to"), str):
            return _xml(twiml.dial(handoff["to"]))
        if handoff:
            return _xml(twiml.hangup())
        call_status = form.get("CallStatus", "")
        error = form.get("ErrorCode")
        if (
            session is not None
            and session.active
            and call_status == "in-progress"
            and (error or form.get("SessionStatus") == "failed")
        ):
            call = call_info(session)
            reconnects = call.get("reconnects", 0)
            if isinstance(reconnects, int) and reconnects < MAX_RECONNECTS:
                # The relay dropped (our restart, a network cut): connect the call again.
                log.info("call %s: relay failed (%s); reconnecting", call_sid, error)
                await self.service.update_session(
                    session.id, meta=with_call(session, reconnects=reconnects + 1)
                )
                return _xml(
                    self._relay_twiml(
                        self._base(request),
                        agent_id=session.agent_id,
                        session_id=session.id,
                        direction=session.direction,
                        greeting=None,
                        language=_opt(call.get("language")),
                    )
                )
        if session is not None and session.active:
            reason = END_REASONS.get(call_status, "failed" if error else "hangup")
            extra = {"error": {"code": error, "message": form.get("ErrorMessage")}} if error else None
            await self.service.end_session(session.id, reason, extra)
        return _xml(twiml.hangup())

    async def status(self, request: Request) -> Response:
        form = await self._signed_form(request)
        call_sid = form.get("CallSid")
        call_status = form.get("CallStatus", "")
        if not call_sid or not call_status:
            raise BadRequest("CallSid and CallStatus are required", code="invalid_webhook")
        session = await self._call_session(call_sid, request.query_params.get("session"))
        reason = END_REASONS.get(call_status)
        if session is not None and reason is not None and session.active:
            extra: dict[str, Any] = {"callStatus": call_status}
            duration = form.get("CallDuration")
            if duration and duration.isdigit():
                extra["duration"] = int(duration)  # the call's own length, as Twilio measured it
            if form.get("SipResponseCode"):
                extra["sipResponseCode"] = form.get("SipResponseCode")
            await self.service.end_session(session.id, reason, extra)
        return Response(status_code=204)

    async def _call_session(self, call_sid: str | None, session_id: str | None) -> SessionRecord | None:
        if session_id:
            found = await self.store.session(session_id)
            if found is not None and call_info(found).get("callSid") in (None, call_sid):
                return found
        if not call_sid:
            return None
        return await self.store.session_by_endpoint(f"{VOICE}:{call_sid}")

    # --------------------------------------------------------------- relay

    async def relay(self, ws: WebSocket) -> None:
        gauge = self.metrics.websockets.labels("twilio_relay")
        gauge.inc()
        try:
            await self._relay(ws)
        except WebSocketDisconnect:
            pass
        finally:
            gauge.dec()

    async def _relay(self, ws: WebSocket) -> None:
        await ws.accept()
        url = public_url(ws.url, ws.headers, self.settings.server, websocket=True)
        if matching_token(url, {}, ws.headers.get("x-twilio-signature"), self.accounts.tokens) is None:
            log.warning("refused a relay socket to %s: invalid or missing X-Twilio-Signature", url)
            await ws.close(4401, "invalid or missing X-Twilio-Signature")
            return
        try:
            async with asyncio.timeout(15):
                msg = await ws.receive()
        except TimeoutError:
            await ws.close(1008, "no setup message")
            return
        if msg["type"] == "websocket.disconnect":
            return
        try:
            setup = rp.parse_frame(msg.get("text") or msg.get("bytes") or b"")
        except rp.FrameError as exc:
            await ws.close(1008, f"the first message must be setup ({exc})")
            return
        if not isinstance(setup, rp.Setup):
            await ws.close(1008, "the first message must be setup")
            return
        session = await self._attach(setup)
        if session is None:
            await ws.send_text(json.dumps(rp.end({"reason": "unknown"})))
            await ws.close(1000, "no agent for this call")
            return
        answered = call_info(session).get("answeredAt")
        if not isinstance(answered, int):
            answered = now_ms()
        conn = RelayConnection(
            ws,
            session,
            directory=self.directory,
            service=self.service,
            stopping=self.stopping,
            store=self.store,
            call_sid=setup.call_sid,
            answered_at_ms=answered,
            on_finish=self._finish,
        )
        previous = self.live.get(session.id)
        self.live[session.id] = conn
        dropped = self._dropped.pop(session.id, None)
        if dropped is not None:
            dropped.cancel()
        if previous is not None:
            previous.ended = True
        # Any socket after the call's first one (a drop, our restart): Twilio may replay.
        await conn.expect_replay()
        try:
            async with self.bus.subscribe_session(session.id, self.settings.server.chat_buffer_frames) as sub:
                pending = [m for m in await self.store.messages(session.id) if m.pending]
                if pending:
                    self.service.turns.submit(session.id)  # reconnected: answer what was left
                await conn.run(sub)
        finally:
            if self.live.get(session.id) is conn:
                del self.live[session.id]
            await self._after_socket(conn)

    async def _attach(self, setup: rp.Setup) -> SessionRecord | None:
        """The call's session: the one named by the TwiML parameters, else a new one."""
        params = setup.parameters
        sid = params.get("sessionId") or ""
        existing = await self.store.session(sid) if sid else None
        if existing is not None:
            known = call_info(existing)
            if "answeredAt" not in known or known.get("callSid") != setup.call_sid:
                changes = {"callSid": setup.call_sid, "answeredAt": known.get("answeredAt") or now_ms()}
                existing = (
                    await self.service.update_session(
                        existing.id, meta=with_call(existing, **changes), endpoint=f"{VOICE}:{setup.call_sid}"
                    )
                    or existing
                )
            if existing.active and not any(m.role == "assistant" for m in await self.store.messages(sid)):
                await self._greeting(existing, _opt(known.get("greeting")))
            return existing if existing.active else None
        agent_id = params.get("agent") or ""
        direction = params.get("direction") or ("outbound" if "outbound" in setup.direction else "inbound")
        if agent_id not in self.directory:
            binding = self.accounts.get(setup.to if direction == "inbound" else setup.from_)
            if binding is None:
                log.warning("relay setup for call %s names no known agent", setup.call_sid)
                return None
            agent_id = self.accounts.route(binding, setup.from_)
        caller = setup.from_ if direction == "inbound" else setup.to
        ours = setup.to if direction == "inbound" else setup.from_
        call: dict[str, Any] = {
            "callSid": setup.call_sid,
            "relaySessionId": setup.session_id,
            "from": setup.from_,
            "to": setup.to,
            "number": ours,
            "answeredAt": now_ms(),
        }
        if setup.caller_name:
            call["callerName"] = setup.caller_name
        if setup.forwarded_from:
            call["forwardedFrom"] = setup.forwarded_from
        session = await self.service.start_session(
            agent_id=agent_id,
            channel=Channel.PHONE,
            contact=ContactRef(channel=Channel.PHONE, address=caller, name=setup.caller_name)
            if caller
            else None,
            direction=direction,
            metadata={CALL_KEY: call},
            endpoint=f"{VOICE}:{setup.call_sid}",
            session_id=sid if sid.startswith("call-") and len(sid) <= 64 else None,
        )
        await self._greeting(session, self.directory.get(agent_id).greeting)
        return session

    async def _greeting(self, session: SessionRecord, greeting: str | None) -> None:
        """Twilio says the welcome greeting; it is stored so the agent knows it was said."""
        if not greeting:
            return
        await self.service.say(session, greeting, meta={"greeting": True}, extra={"greeting": True})

    async def _after_socket(self, conn: RelayConnection) -> None:
        """The socket is gone: settle the reply it was saying; end the session if the call is over."""
        sid = conn.sid
        if self.stopping.is_set():
            return  # the reply stays pending; Twilio's action callback reconnects after the restart
        mid, said = conn.streamed_text()
        # A reply already said in full is being stored: let it be. Otherwise the reply
        # in progress (or the turn not yet speaking) stops with what the caller heard.
        stop = mid is not None or (conn.storing is None and self.service.turns.busy(sid))
        if not conn.ended and stop:
            try:
                await self.service.interrupt(sid, mid, said, data={"reason": "disconnected"})
            except GatewayError:
                pass
        if conn.ended:
            return
        session = await self.store.session(sid)
        if session is None or not session.active:
            return
        wait = self.directory.get(session.agent_id).phone.relay_reconnect_seconds
        # The caller hung up (the status callback will say so) or the socket dropped (the
        # action callback may reconnect it): either way the session ends if nothing comes.
        self._dropped[sid] = asyncio.create_task(self._end_if_not_back(sid, wait))

    async def _end_if_not_back(self, sid: str, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
            if sid not in self.live:
                await self.service.end_session(sid, "hangup")
        except GatewayError:
            pass
        finally:
            self._dropped.pop(sid, None)

    # ------------------------------------------------------- call control

    async def control(
        self,
        session_id: str,
        action: str,
        args: Mapping[str, Any],
        *,
        after_reply: bool = False,
        here: bool = False,
    ) -> dict[str, Any]:
        if action not in CALL_ACTIONS:
            raise BadRequest(f"unknown call action {action!r}", code="unknown_action")
        session = await self.store.session(session_id)
        if session is None or session.channel != str(Channel.PHONE):
            raise NotFound(f"no phone call {session_id!r}", code="unknown_session")
        if not session.active:
            raise Conflict(f"call {session_id} has ended", code="session_ended")
        conn = self.live.get(session_id)
        clean = _check_args(action, args)
        if conn is None and not here:
            # Several instances: the relay socket may be on another one; it acts there.
            order = {"action": action, "args": dict(clean), "after_reply": after_reply}
            answer = await self.remote.ask(CALL_ORDER, session_id, order)
            if answer is not None:
                return answer
        if after_reply and conn is not None and action in ("hangup", "forward"):
            conn.after_reply = (action, clean)
            return {"sessionId": session_id, "action": action, "status": "after_reply"}
        if action in ("hangup", "forward"):
            await self._finish(action, session_id, clean)
        elif conn is None:
            raise Conflict(f"call {session_id} has no live relay connection", code="call_not_connected")
        elif action == "digits":
            await conn.send(rp.send_digits(clean["digits"]))
        elif action == "configure":
            for frame in rp.configure(clean):
                await conn.send(frame)
            call = call_info(session)
            kept = {**(call.get("config") or {}), **clean}
            changes: dict[str, Any] = {"config": kept}
            if "language" in clean:
                changes["language"] = clean["language"]
            await self.service.update_session(session_id, meta=with_call(session, **changes))
            await self.service.record_events(
                [
                    Event(
                        type=CALL_CONFIGURED,
                        agent=session.agent_id,
                        session_id=session_id,
                        channel=session.channel,
                        data={"settings": clean},
                    )
                ]
            )
        else:
            await conn.send(rp.language(clean["language"]))
            await self.service.update_session(session_id, meta=with_call(session, language=clean["language"]))
        return {"sessionId": session_id, "action": action, "status": "ok"}

    async def _finish(self, action: str, session_id: str, args: Mapping[str, Any] | None) -> None:
        """End a call: hang up, forward it, or stop it at a limit (`timeout`)."""
        args = args or {}
        session = await self.store.session(session_id)
        if session is None or not session.active:
            return
        conn = self.live.get(session_id)
        call_sid = call_info(session).get("callSid")
        if action == "forward":
            to = str(args["to"])
            handoff: dict[str, Any] = {"action": "forward", "to": to}
            await self.service.record_events(
                [
                    Event(
                        type=EventType.CALL_FORWARDED,
                        agent=session.agent_id,
                        session_id=session_id,
                        channel=session.channel,
                        data={"to": to},
                    )
                ]
            )
            reason, extra = "closed", {"forwardedTo": to}
        else:
            reason = str(args.get("reason") or "closed")
            handoff, extra = {"action": "hangup", "reason": reason}, {}
        if conn is not None and not conn.ended:
            await conn.end(handoff)
        elif isinstance(call_sid, str) and call_sid:
            await self._rest_end(session, call_sid, handoff)
        await self.service.end_session(session_id, reason, extra)

    async def _rest_end(self, session: SessionRecord, call_sid: str, handoff: dict[str, Any]) -> None:
        """No relay socket (ringing, or it dropped): change the call through the REST API."""
        binding = self.accounts.get(str(call_info(session).get("number") or ""))
        if binding is None:
            log.warning("call %s: no Twilio number to end it through", call_sid)
            return
        try:
            if handoff.get("action") == "forward":
                await binding.client.update_call(call_sid, twiml=twiml.dial(str(handoff["to"])))
            else:
                await binding.client.update_call(call_sid, status="completed")
        except TwilioError as exc:
            log.warning("call %s: Twilio refused the update: %s", call_sid, exc.message)
            raise AgentError(f"Twilio refused the call update: {exc.message}", code="twilio_error") from None

    async def control_route(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        session_id, action = request.path_params["session_id"], request.path_params["action"]
        await self.access.session(principal, session_id)
        body = await parse_body(request, CallControlRequest, limit=65_536)  # no body: no arguments
        return JSONResponse(await self.control(session_id, action, body.arguments()))

    # ------------------------------------------------------------ outbound

    async def dial(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        body = await parse_body(request, CallRequest, limit=65_536)
        agent_id = body.agent
        config = self.access.agent(principal, agent_id)
        to = body.to
        if not E164.match(to):
            raise BadRequest("`to` must be an E.164 number like +14155550123", code="invalid_to")
        binding = self._caller_id(agent_id, body.from_)
        greeting = body.greeting or config.greeting
        language = body.language
        if language is not None and not LANGUAGE.match(language):
            raise BadRequest("`language` must be a code like es-ES", code="invalid_language")
        metadata = body.metadata
        base = self.settings.server.public_url
        if not base:
            raise Conflict(
                "outbound calls need server.public_url (Twilio must reach the gateway)", code="no_public_url"
            )
        http = base.rstrip("/")
        ws = (
            "wss://" + http.split("://", 1)[1]
            if http.startswith("https://")
            else "ws://" + http.split("://", 1)[1]
        )
        session = await self.service.start_session(
            agent_id=agent_id,
            channel=Channel.PHONE,
            contact=ContactRef(channel=Channel.PHONE, address=to),
            direction="outbound",
            metadata={
                **(metadata or {}),
                CALL_KEY: {"from": binding.config.number, "to": to, "number": binding.config.number}
                | ({"greeting": greeting} if greeting else {})
                | ({"language": language} if language else {}),
            },
            session_id=ids.session_id(Channel.PHONE),
        )
        body_twiml = self._relay_twiml(
            (http, ws),
            agent_id=agent_id,
            session_id=session.id,
            direction="outbound",
            greeting=greeting,
            language=language,
        )
        try:
            call = await self._create_call(
                binding, to, body_twiml, f"{http}/twilio/voice/status?session={session.id}"
            )
        except TwilioError as exc:
            error = {"code": exc.code, "status": exc.status, "message": exc.message}
            await self.service.end_session(session.id, "failed", {"error": error})
            raise GatewayError(
                f"Twilio refused the call: {exc.message}",
                code="twilio_error",
                status=429 if exc.status == 429 else 502,
            ) from None
        call_sid = str(call.get("sid", ""))
        await self.service.update_session(
            session.id, meta=with_call(session, callSid=call_sid), endpoint=f"{VOICE}:{call_sid}"
        )
        return JSONResponse(
            {"sessionId": session.id, "callSid": call_sid, "status": call.get("status", "queued")},
            status_code=201,
        )

    def _caller_id(self, agent_id: str, from_: str | None) -> Binding:
        mine = self.accounts.voice_numbers(agent_id)
        if from_:
            found = next((b for b in mine if b.config.number == from_), None)
            if found is None:
                raise BadRequest(
                    f"agent {agent_id!r} has no Twilio voice number {from_}", code="unknown_number"
                )
            return found
        if not mine:
            raise BadRequest(f"agent {agent_id!r} has no Twilio voice number", code="no_phone_number")
        if len(mine) > 1:
            raise BadRequest(
                f"agent {agent_id!r} has several numbers: say which one with `from`", code="from_required"
            )
        return mine[0]

    async def _create_call(self, binding: Binding, to: str, body: str, status_url: str) -> dict[str, Any]:
        """Calls.json, retried only where no call can have been placed (429, connection failures)."""
        for attempt in range(CREATE_CALL_ATTEMPTS):
            try:
                return await binding.client.create_call(
                    from_=binding.config.e164, to=to, twiml=body, status_callback=status_url
                )
            except TwilioError as exc:
                safe = exc.status == 429 or (exc.status is None and not exc.maybe_sent)
                if not safe or attempt == CREATE_CALL_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(
                    min(5.0, exc.retry_after if exc.retry_after is not None else 0.5 * 2**attempt)
                )
        raise AssertionError("unreachable")


def call_info(session: SessionRecord) -> dict[str, Any]:
    """The gateway's own facts about a call (`meta.call`), apart from the caller's metadata."""
    call = session.meta.get(CALL_KEY)
    return dict(call) if isinstance(call, dict) else {}


def with_call(session: SessionRecord, **changes: Any) -> dict[str, Any]:
    """The session's meta with `meta.call` updated."""
    return {**session.meta, CALL_KEY: {**call_info(session), **changes}}


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_settings(args: Mapping[str, Any]) -> dict[str, Any]:
    """Mid-call settings: each one optional, at least one, every value checked."""
    out: dict[str, Any] = {}
    unknown = set(args) - {"language", "hints", *rp.SESSION_SETTINGS, *rp.LANGUAGE_SETTINGS}
    if unknown:
        raise BadRequest(
            f"unknown call settings: {', '.join(sorted(unknown))[:200]}", code="invalid_settings"
        )
    if "language" in args:
        out["language"] = _check_args("language", args)["language"]
    if "interruptible" in args:
        value = args["interruptible"]
        value = {True: "any", False: "none"}.get(value, value) if isinstance(value, bool) else value
        if value not in ("any", "speech", "dtmf", "none"):
            raise BadRequest("`interruptible` is any, speech, dtmf or none", code="invalid_settings")
        out["interruptible"] = value
    for key in ("preemptible", "dtmfDetection"):
        if key in args:
            if not isinstance(args[key], bool):
                raise BadRequest(f"`{key}` must be true or false", code="invalid_settings")
            out[key] = args[key]
    for key in rp.LANGUAGE_SETTINGS:
        if key in args:
            value = args[key]
            if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
                raise BadRequest(f"`{key}` must be a short string", code="invalid_settings")
            out[key] = value
    if "hints" in args:
        hints = args["hints"]
        if isinstance(hints, str):
            hints = [h.strip() for h in hints.split(",") if h.strip()]
        if (
            not isinstance(hints, list)
            or len(hints) > 500
            or not all(isinstance(h, str) and 0 < len(h) <= 100 and "," not in h for h in hints)
        ):
            raise BadRequest("`hints` is a list of words or phrases (no commas)", code="invalid_settings")
        out["hints"] = hints
    if not out:
        raise BadRequest("name at least one setting to change", code="invalid_settings")
    return out


def _check_args(action: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if action == "forward":
        to = args.get("to")
        if not isinstance(to, str) or not (E164.match(to) or (to.startswith("sip:") and len(to) < 256)):
            raise BadRequest("`to` must be an E.164 number or a sip: URI", code="invalid_to")
        return {"to": to}
    if action == "digits":
        digits = args.get("digits")
        if not isinstance(digits, str) or not DIGITS.match(digits):
            raise BadRequest("`digits` may hold only 0-9, w, # and *", code="invalid_digits")
        return {"digits": digits}
    if action == "language":
        lang = args.get("language")
        if not isinstance(lang, str) or not LANGUAGE.match(lang):
            raise BadRequest("`language` must be a code like en-US", code="invalid_language")
        return {"language": lang}
    if action == "configure":
        return _check_settings(args)
    reason = args.get("reason")
    return (
        {"reason": reason} if isinstance(reason, str) and reason.isidentifier() and len(reason) <= 32 else {}
    )
