"""Twilio Messaging: SMS, MMS and WhatsApp-via-Twilio in, replies out through the outbox.

Inbound (`POST /twilio/messaging`, the number's "A message comes in" webhook):
check `X-Twilio-Signature` over the public URL and every form parameter, route by
`To` (dev routes by `From` first), store the message (idempotent by `MessageSid`)
and only then answer an empty TwiML `<Response/>`; the agent runs after. Twilio
mostly does not redeliver a failed webhook, so nothing slow happens before the 200.

Outbound: this class is the `Delivery` of provider `twilio`. A reply is rendered into
Message payloads (plain text for SMS, WhatsApp formatting for `whatsapp:` senders,
images as `MediaUrl`s, bodies under 1600 characters) and each is created through the
REST API with a per-message `StatusCallback` that carries the part's idempotency key.

Statuses (`POST /twilio/messaging/status?k=<key>`) move each part forward, never
back; `undelivered` and `failed` are final, and a 63016 closes the WhatsApp window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from twilio.twiml.messaging_response import MessagingResponse

from channels.twilio.accounts import PROVIDER, TWILIO_FORM, Binding, TwilioAccounts, clean_form, read_form
from channels.twilio.errors import OUTSIDE_WINDOW, TwilioError
from channels.twilio.render import render_bodies
from channels.twilio.signature import matching_token, public_url
from channels.whatsapp.referral import from_twilio
from channels.whatsapp.transcribe import TranscriptionError
from gateway.api.operation import ApiRoute
from gateway.codec import bounded
from gateway.conversations import ConversationService
from gateway.delivery import SendFailed, Template, endpoint_address
from gateway.errors import BadRequest, Unauthorized
from gateway.events import ContactRef, Event, InboundMessage
from gateway.limits import whatsapp_window_open
from gateway.sanitizer import MAX_ID, MAX_NAME, clip
from gateway.settings import Settings
from gateway.store.outbox import FINAL
from gateway.store.records import MessageRecord, OutboxItem, SessionRecord
from gateway.store.sql import Store
from gateway.types import Channel

log = logging.getLogger("gateway.twilio")

UNROUTABLE = "_unroutable"
WHATSAPP_PREFIX = "whatsapp:"
MAX_MEDIA = 20  # Twilio sends at most 10; a bogus NumMedia never makes us loop far
STATUS_PATH = "/twilio/messaging/status"
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
MAX_AUDIO_BYTES = 16 * 1024 * 1024

# Twilio's MessageStatus -> the outbox's delivery status. Statuses not listed
# (queued, sending, accepted, scheduled, receiving, received, partially_delivered)
# say nothing the outbox ranks: they are acknowledged and ignored.
_STATES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": FINAL,
    "undelivered": FINAL,
    "canceled": FINAL,
}

# Status callbacks carry an ErrorCode but rarely a message: say what the common ones mean.
_ERROR_TEXT = {
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered by the carrier",
    30008: "Unknown error",
    21610: "The recipient has opted out (STOP)",
    63016: "Outside the WhatsApp 24-hour window: only a template can reach this user",
}

_TWIML_EMPTY = str(MessagingResponse())


@dataclass(frozen=True, kw_only=True, slots=True)
class TwilioInbound:
    """One inbound Message webhook, parsed once at the edge."""

    sid: str
    account_sid: str | None
    from_: str
    to: str
    body: str
    media: tuple[Mapping[str, str], ...] = ()
    num_segments: int | None = None
    profile_name: str | None = None
    wa_id: str | None = None
    button_text: str | None = None
    button_payload: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    address: str | None = None
    label: str | None = None
    message_type: str | None = None
    replied_to: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referral: Mapping[str, Any] | None = None
    raw: Mapping[str, str] | None = None  # kept for a message the gateway cannot read

    @property
    def whatsapp(self) -> bool:
        return self.from_.startswith(WHATSAPP_PREFIX)

    @property
    def channel(self) -> Channel:
        return Channel.WHATSAPP if self.whatsapp else Channel.SMS

    @property
    def sender(self) -> str:
        """The contact's address: E.164 (`+1555…`) for SMS, wa_id digits for WhatsApp."""
        if self.whatsapp:
            return self.wa_id or self.from_.removeprefix(WHATSAPP_PREFIX).lstrip("+")
        return self.from_

    def content(self) -> tuple[str, str, list[dict[str, Any]]]:
        """(protocol type, the text the agent reads, structured parts)."""
        if self.button_text is not None or self.button_payload is not None:
            text = self.button_text or self.body or self.button_payload or ""
            button = {"kind": "button", "text": self.button_text, "payload": self.button_payload}
            return "interactive", text, [button]
        if self.latitude is not None and self.longitude is not None:
            part: dict[str, Any] = {
                "kind": "location",
                "latitude": self.latitude,
                "longitude": self.longitude,
                "name": self.label,
                "address": self.address,
            }
            where = f"{_coord(self.latitude)},{_coord(self.longitude)}"
            named = ", ".join(s for s in (self.label, self.address) if s)
            return "location", self.body or f"[location: {' '.join(s for s in (where, named) if s)}]", [part]
        if self.media:
            kinds = [m["kind"] for m in self.media]
            return kinds[0], self.body or f"[{', '.join(kinds)}]", [dict(m) for m in self.media]
        if self.body:
            return "text", self.body, []
        return "unsupported", f"[{self.message_type or 'empty'} message]", []

    def extra(self) -> dict[str, Any]:
        """More fields for the `user.message` event."""
        out: dict[str, Any] = {
            "providerMessageId": self.sid,
            "contact": {"id": self.sender, "name": self.profile_name},
        }
        if self.num_segments is not None:
            out["numSegments"] = self.num_segments
        if self.replied_to:
            out["replyTo"] = self.replied_to
        out.update(self.facts())
        return out

    def facts(self) -> dict[str, Any]:
        """What the message says about itself: on the event and in the stored message alike."""
        out: dict[str, Any] = {}
        if self.forwarded or self.frequently_forwarded:
            out["forwarded"] = True
        if self.frequently_forwarded:
            out["frequentlyForwarded"] = True
        if self.referral:
            out["referral"] = dict(self.referral)
        return out

    def meta(self) -> dict[str, Any]:
        """What the stored message keeps about its provider side."""
        out: dict[str, Any] = {"provider": PROVIDER}
        if self.message_type:
            out["twilioType"] = self.message_type
        if self.replied_to:
            out["replyTo"] = self.replied_to
        if self.num_segments is not None:
            out["numSegments"] = self.num_segments
        out.update(self.facts())
        if self.content()[0] == "unsupported" and self.raw:
            out["raw"] = bounded(dict(self.raw))  # a type we cannot read yet: keep what Twilio sent
        return out


def parse_inbound(form: Mapping[str, str]) -> TwilioInbound:
    """The fields the gateway uses; 400 when the three it cannot do without are missing."""
    sid, from_, to = _str(form.get("MessageSid")), _str(form.get("From")), _str(form.get("To"))
    if not sid or not from_ or not to:
        missing = [k for k, v in (("MessageSid", sid), ("From", from_), ("To", to)) if not v]
        raise BadRequest(f"a Twilio message webhook needs {', '.join(missing)}", code="invalid_webhook")
    media = []
    for n in range(min(_int(form.get("NumMedia")) or 0, MAX_MEDIA)):
        url = _str(form.get(f"MediaUrl{n}"))
        if url:
            mime = _str(form.get(f"MediaContentType{n}")) or "application/octet-stream"
            media.append({"kind": _media_kind(mime), "url": url, "mimeType": mime})
    return TwilioInbound(
        sid=sid,
        account_sid=_str(form.get("AccountSid")),
        from_=from_,
        to=to,
        body=form.get("Body") or "",
        media=tuple(media),
        num_segments=_int(form.get("NumSegments")),
        profile_name=_str(form.get("ProfileName")),
        wa_id=_str(form.get("WaId")),
        button_text=_str(form.get("ButtonText")),
        button_payload=_str(form.get("ButtonPayload")),
        latitude=_float(form.get("Latitude")),
        longitude=_float(form.get("Longitude")),
        address=_str(form.get("Address")),
        label=_str(form.get("Label")),
        message_type=_str(form.get("MessageType")),
        replied_to=_str(form.get("OriginalRepliedMessageSid")),
        forwarded=(form.get("Forwarded") or "").lower() == "true",
        frequently_forwarded=(form.get("FrequentlyForwarded") or "").lower() == "true",
        referral=from_twilio(form),
        raw={k: v for k, v in form.items()},
    )


class TwilioMessaging:
    def __init__(
        self, accounts: TwilioAccounts, *, service: ConversationService, settings: Settings, store: Store
    ) -> None:
        self.service = service
        self.settings = settings
        self.store = store
        self.accounts = accounts
        self._warned_no_public_url = False
        self._background: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/twilio/messaging",
                self.inbound,
                method="POST",
                summary="Twilio inbound SMS/MMS/WhatsApp webhook (X-Twilio-Signature); answers empty TwiML",
                raw_body=TWILIO_FORM,
                secured=False,
                produces="text/xml",
                errors=(400, 401, 413, 415),
            ),
            ApiRoute(
                STATUS_PATH,
                self.status,
                method="POST",
                summary="Twilio message status callback (X-Twilio-Signature)",
                raw_body=TWILIO_FORM,
                secured=False,
                produces="text/xml",
                errors=(400, 401, 413, 415),
            ),
        ]

    # ------------------------------------------------------------ inbound

    async def _verified(self, request: Request) -> tuple[ImmutableMultiDict[str, str], str]:
        """The form and the auth token that signed it; 401 (nothing stored) otherwise."""
        form = await read_form(request)
        url = public_url(request.url, request.headers, self.settings.server)
        token = matching_token(
            url,
            form,
            request.headers.get("x-twilio-signature"),
            self.accounts.tokens_for(form.get("AccountSid")),
        )
        if token is None:
            log.warning("twilio webhook refused: missing or wrong X-Twilio-Signature for %s", url)
            raise Unauthorized("invalid or missing X-Twilio-Signature", code="invalid_signature")
        return clean_form(form), token

    async def inbound(self, request: Request) -> Response:
        form, token = await self._verified(request)
        msg = parse_inbound(form)
        binding = self.accounts.get(msg.to)
        if binding is None:
            await self._unroutable(msg)
            return _twiml()
        if binding.token != token:
            # Another account's token signed a message for this number: it is not theirs to send.
            raise Unauthorized("the signing account does not own this number", code="invalid_signature")
        problem = _unusable(msg)
        if problem is not None:  # recorded as bad and acknowledged: Twilio would only retry it
            await self._rejected(binding.agent_id, msg, problem)
            return _twiml()
        kind, text, parts = msg.content()
        name = None if msg.profile_name is None else clip(msg.profile_name, MAX_NAME)
        contact = ContactRef(channel=msg.channel, address=msg.sender, name=name)
        results = await self.service.receive_many(
            [
                InboundMessage(
                    agent=self.accounts.route(binding, msg.from_),
                    channel=msg.channel,
                    contact=contact,
                    text=text,
                    type=kind,
                    provider_message_id=msg.sid,
                    parts=tuple(parts),
                    endpoint=f"{PROVIDER}:{binding.config.number}",
                    extra=msg.extra(),
                    message_meta=msg.meta(),
                )
            ]
        )
        for result in results:
            m = result.message
            if m is not None and not m.pending and kind == "audio" and result.session.paused:
                # Paused: no turn will transcribe it, but the operator still wants to read it.
                task = asyncio.create_task(self.prepare(result.session, [m]))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return _twiml()

    async def _rejected(self, agent: str, msg: TwilioInbound, problem: str) -> None:
        """A message the store cannot hold as it is: an event and a log line keep what it said."""
        sid = clip(msg.sid, MAX_ID)
        log.warning(
            "twilio message %s rejected (%s): acknowledged, recorded as webhook.rejected", sid, problem
        )
        await self.service.record_events(
            [
                Event(
                    type="webhook.rejected",
                    agent=agent,
                    channel=str(msg.channel),
                    data={
                        "provider": PROVIDER,
                        "to": clip(msg.to, MAX_ID),
                        "from": clip(msg.from_, MAX_ID),
                        "providerMessageId": sid,
                        "text": clip(msg.body, 4096),
                        "reason": problem,
                    },
                )
            ]
        )

    async def _unroutable(self, msg: TwilioInbound) -> None:
        log.warning("twilio message %s for unconfigured number %s: acknowledged, not routed", msg.sid, msg.to)
        channel = Channel.WHATSAPP if msg.to.startswith(WHATSAPP_PREFIX) else Channel.SMS
        await self.service.record_events(
            [
                Event(
                    type="webhook.unroutable",
                    agent=UNROUTABLE,
                    channel=str(channel),
                    data={
                        "provider": PROVIDER,
                        "to": msg.to,
                        "from": msg.from_,
                        "providerMessageId": msg.sid,
                        "accountSid": msg.account_sid,
                    },
                )
            ]
        )

    async def status(self, request: Request) -> Response:
        form, token = await self._verified(request)
        ours = self.accounts.get(form.get("From"))
        if ours is not None and ours.token != token:
            raise Unauthorized("the signing account does not own this number", code="invalid_signature")
        sid = _str(form.get("MessageSid"))
        raw = (_str(form.get("MessageStatus")) or _str(form.get("SmsStatus")) or "").lower()
        if not sid or not raw:
            raise BadRequest("a status callback needs MessageSid and MessageStatus", code="invalid_webhook")
        state = _STATES.get(raw)
        if state is None:
            return _twiml()
        error = None
        code = _int(form.get("ErrorCode"))
        if state == FINAL:
            text = _str(form.get("ErrorMessage")) or (_ERROR_TEXT.get(code) if code else None) or raw
            error = {"code": code, "status": raw, "message": text}
        addresses = (form.get("From") or "", form.get("To") or "", form.get("ChannelPrefix") or "")
        whatsapp = any(a.startswith("whatsapp") for a in addresses)
        await self.service.delivery_status(
            channel=str(Channel.WHATSAPP if whatsapp else Channel.SMS),
            provider_message_id=sid,
            status=state,
            error=error,
            idempotency_key=request.query_params.get("k"),
            close_window=state == FINAL and code == OUTSIDE_WINDOW,
        )
        return _twiml()

    # ----------------------------------------------------------- delivery

    def _binding_of(self, session: SessionRecord | OutboxItem) -> Binding:
        number = endpoint_address(session)
        binding = self.accounts.get(number)
        if binding is None:
            raise SendFailed("unknown_number", f"no Twilio number {number!r} is configured", retryable=False)
        return binding

    def render(
        self,
        session: SessionRecord,
        text: str,
        reply_to: MessageRecord | None,
        *,
        max_parts: int | None = None,
    ) -> list[dict[str, Any]]:
        # Twilio threads nothing (no reply context on SMS or WhatsApp sends): `reply_to` is unused.
        # `max_parts` (limits.max_reply_messages) is a Cloud API bound: not applied here.
        from_ = endpoint_address(session)
        whatsapp = session.channel == str(Channel.WHATSAPP)
        address = session.contact.address if session.contact else ""
        to = f"{WHATSAPP_PREFIX}+{address.lstrip('+')}" if whatsapp else address
        return [
            {"to": to, "from": from_, "body": b.text, "mediaUrls": list(b.media)}
            for b in render_bodies(text, whatsapp=whatsapp)
        ]

    def _status_callback(self, key: str) -> str | None:
        base = self.settings.server.public_url
        if not base:
            if not self._warned_no_public_url:
                self._warned_no_public_url = True
                log.warning(
                    "server.public_url is not set: Twilio messages are sent without a StatusCallback, "
                    "so their delivery statuses (delivered, read, failed) are never reported"
                )
            return None
        return f"{base.rstrip('/')}{STATUS_PATH}?{urlencode({'k': key})}"

    async def send(self, item: OutboxItem) -> str:
        binding = self._binding_of(item)
        payload = item.payload
        media = payload.get("mediaUrls") or []
        try:
            resource = await binding.client.send_message(
                from_=str(payload.get("from") or binding.config.number),
                to=str(payload.get("to") or ""),
                body=str(payload.get("body") or "") or None,
                media_urls=[str(u) for u in media] if isinstance(media, list) else [],
                content_sid=_str(payload.get("contentSid")),
                content_variables=_str(payload.get("contentVariables")),
                # The key comes back on every status callback: after a crash it proves a part went out.
                status_callback=self._status_callback(item.idempotency_key),
            )
        except TwilioError as exc:
            details = dict(exc.details)
            if exc.status is not None:
                details["httpStatus"] = exc.status
            raise SendFailed(
                str(exc.code or exc.status or "network"),
                exc.message,
                retryable=exc.retryable,
                retry_after=exc.retry_after,
                details=details or None,
                closes_window=exc.code == OUTSIDE_WINDOW,
                maybe_sent=exc.maybe_sent,
            ) from None
        sid = resource.get("sid")
        if not isinstance(sid, str) or not sid:
            # Twilio said yes without naming the message: it may well go out; never resend it.
            raise SendFailed(
                "no_sid", "Twilio accepted the message but returned no sid", retryable=False, maybe_sent=True
            )
        return sid

    def template(self, session: SessionRecord, spec: dict[str, Any]) -> Template:
        """A Content template (`{contentSid, contentVariables?}`): WhatsApp outside the window, or SMS."""
        sid = spec.get("contentSid")
        variables = spec.get("contentVariables")
        if not isinstance(sid, str) or not CONTENT_SID.match(sid):
            raise BadRequest("`contentSid` is a Content template sid (HX + 32 hex)", code="invalid_template")
        if variables is not None and not isinstance(variables, dict):
            raise BadRequest("`contentVariables` must be an object", code="invalid_template")
        address = session.contact.address if session.contact else ""
        whatsapp = session.channel == str(Channel.WHATSAPP)
        return Template(
            name=sid,
            payload={
                "to": f"{WHATSAPP_PREFIX}+{address.lstrip('+')}" if whatsapp else address,
                "from": endpoint_address(session),
                "contentSid": sid,
                "contentVariables": json.dumps(variables or {}),
            },
            part={"kind": "template", "contentSid": sid, "variables": variables or {}},
        )

    async def prepare(self, session: SessionRecord, pending: list[MessageRecord]) -> list[MessageRecord]:
        """Transcribe audio (WhatsApp voice notes, MMS audio) before the agent reads it.

        Runs inside the turn, after the webhook's 200; without a transcriber, or when it
        fails, the agent reads `[audio]` as before.
        """
        transcriber = self.accounts.transcribers.get(session.agent_id)
        if transcriber is None:
            return pending
        out = []
        for m in pending:
            audio = next((p for p in m.parts if isinstance(p, dict) and p.get("kind") == "audio"), None)
            if audio is None or not m.text.startswith("[audio") or not audio.get("url"):
                out.append(m)
                continue
            try:
                data, mime = await self._binding_of(session).client.download(
                    str(audio["url"]), max_bytes=MAX_AUDIO_BYTES
                )
                said = await transcriber.transcribe(data, mime or str(audio.get("mimeType")), "audio")
            except (TwilioError, TranscriptionError, SendFailed) as exc:
                log.warning("audio %s not transcribed: %s", m.id, exc, extra={"session_id": session.id})
                out.append(m)
                continue
            text = f"{m.text} {said.strip()}"
            await self.service.set_transcript(m.id, text)
            out.append(dataclasses.replace(m, text=text))
        return out

    async def typing(self, session: SessionRecord, message: MessageRecord) -> None:
        """SMS has no typing indicator; none is sent for WhatsApp via Twilio either."""

    def window_open(self, session: SessionRecord, now_ms: int) -> bool:
        if session.channel != str(Channel.WHATSAPP):
            return True  # SMS has no conversation window
        return whatsapp_window_open(session, now_ms)


def _unusable(msg: TwilioInbound) -> str | None:
    """Why a message cannot be stored as it is (ids that do not fit their columns), or None."""
    if len(msg.sid) > MAX_ID:
        return f"`MessageSid` is longer than {MAX_ID} characters"
    if len(msg.sender) > MAX_ID:
        return f"`From` is longer than {MAX_ID} characters"
    return None


def _twiml() -> Response:
    return Response(_TWIML_EMPTY, media_type="text/xml")


def _media_kind(mime: str) -> str:
    major = mime.split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "document"


def _str(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    text = _str(value)
    ok = text is not None and len(text) <= 9 and text.isascii() and text.isdigit()
    return int(text) if ok and text is not None else None


def _float(value: Any) -> float | None:
    text = _str(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _coord(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
