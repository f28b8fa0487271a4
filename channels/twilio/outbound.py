"""`POST /v1/agents/{agent}/twilio/messages`: the business writes first, by SMS or WhatsApp.

A new session (`direction: "outbound"`) is started with the contact and the message
goes out through the outbox like any reply, so a reply from the contact lands in that
session. WhatsApp allows free-form text only inside the 24-hour window, so a new
WhatsApp conversation is opened with an approved template (`contentSid`, Twilio's
Content API); SMS takes text (or a template too).
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from channels.twilio.accounts import PROVIDER, Binding, TwilioAccounts
from channels.twilio.messaging import CONTENT_SID, WHATSAPP_PREFIX, TwilioMessaging
from gateway.access import Access
from gateway.api.models import TwilioStartRequest
from gateway.api.operation import ApiRoute, parse_body
from gateway.conversations import ConversationService, check_text
from gateway.errors import BadRequest, Conflict
from gateway.events import ContactRef
from gateway.store.outbox import OutboxPart
from gateway.types import Channel

E164 = re.compile(r"^\+[1-9][0-9]{4,15}$")


class TwilioOutbound:
    def __init__(
        self,
        accounts: TwilioAccounts,
        messaging: TwilioMessaging,
        *,
        access: Access,
        service: ConversationService,
    ) -> None:
        self.access = access
        self.service = service
        self.accounts = accounts
        self.messaging = messaging

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/v1/agents/{agent}/twilio/messages",
                self.start,
                method="POST",
                summary="Start an SMS conversation (text) or a WhatsApp one (a Content template) via Twilio",
                body=TwilioStartRequest,
                ok=202,
                errors=(401, 403, 404, 409, 413, 415, 502),
            )
        ]

    async def start(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent"]
        principal = await self.access.key(request)
        config = self.access.agent(principal, agent_id)
        body = await parse_body(request, TwilioStartRequest, limit=65_536)
        raw_to = body.to
        whatsapp = raw_to.startswith(WHATSAPP_PREFIX)
        to = raw_to.removeprefix(WHATSAPP_PREFIX)
        if not E164.match(to):
            raise BadRequest(
                "`to` must be an E.164 number (`+14155550123`, or `whatsapp:+14155550123`)", code="invalid_to"
            )
        binding = self._sender(agent_id, body.from_, whatsapp=whatsapp)
        text = body.text
        content_sid = body.contentSid
        variables = body.contentVariables
        if content_sid is not None and not CONTENT_SID.match(content_sid):
            raise BadRequest("`contentSid` is a Content template sid (HX + 32 hex)", code="invalid_template")
        if variables is not None and (content_sid is None or not isinstance(variables, dict)):
            raise BadRequest(
                "`contentVariables` is an object, sent with `contentSid`", code="invalid_template"
            )
        if content_sid is None:
            if whatsapp:
                raise Conflict(
                    "a WhatsApp conversation is opened with an approved template (`contentSid`): "
                    "free-form text is allowed only within 24 hours of the contact's last message",
                    code="template_required",
                )
            text = check_text(text, config.limits.max_text_chars)
        elif text is not None:
            raise BadRequest("send either `text` or `contentSid`, not both", code="invalid_template")
        metadata = body.metadata
        channel = Channel.WHATSAPP if whatsapp else Channel.SMS
        session = await self.service.start_session(
            agent_id=agent_id,
            channel=channel,
            contact=ContactRef(channel=channel, address=to.lstrip("+") if whatsapp else to),
            direction="outbound",
            metadata=metadata,
            endpoint=f"{PROVIDER}:{binding.config.number}",
        )
        if content_sid is not None:
            spec = {"contentSid": content_sid, "contentVariables": variables}
            template = self.messaging.template(session, spec)
            message_id = await self.service.send_template(session, template)
            return _queued(session.id, message_id)
        shown = str(text)
        payloads = self.messaging.render(session, shown, None)
        message_id = await self.service.say(
            session,
            shown,
            outbox=[OutboxPart(payload=p, part=i, parts=len(payloads)) for i, p in enumerate(payloads)],
        )
        return _queued(session.id, message_id)

    def _sender(self, agent_id: str, from_: str | None, *, whatsapp: bool) -> Binding:
        mine = [
            b
            for b in self.accounts.by_number.values()
            if b.agent_id == agent_id and b.config.whatsapp == whatsapp
        ]
        kind = "WhatsApp sender" if whatsapp else "SMS number"
        if from_:
            found = next((b for b in mine if from_ in (b.config.number, b.config.e164)), None)
            if found is None:
                raise BadRequest(f"agent {agent_id!r} has no Twilio {kind} {from_}", code="unknown_number")
            return found
        if not mine:
            raise BadRequest(f"agent {agent_id!r} has no Twilio {kind}", code="unknown_number")
        if len(mine) > 1:
            raise BadRequest(f"agent {agent_id!r} has several: say which with `from`", code="from_required")
        return mine[0]


def _queued(session_id: str, message_id: str) -> JSONResponse:
    return JSONResponse(
        {"sessionId": session_id, "messageId": message_id, "status": "queued"}, status_code=202
    )
