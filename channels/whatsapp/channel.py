"""The WhatsApp Cloud API channel: webhook in, replies out through the outbox.

Inbound: verify the raw bytes (X-Hub-Signature-256 against every configured app
secret; the matching secret must own the numbers in the payload), parse once,
route by `metadata.phone_number_id` (dev routes by sender first), store every
message of the delivery in ONE transaction, then answer 200; the agent runs after.
Statuses move each sent part forward (never back) and a 131047 closes the window.

Outbound: this class is the `Delivery` of provider `whatsapp`: it renders a reply
into text parts (markdown → WhatsApp, split under 4096 characters, the first part
threaded to the user's message), and sends each part for the outbox, marking the
user's message read with a typing indicator when a turn starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute

from channels.whatsapp.client import GraphClient, template_payload, text_payload
from channels.whatsapp.echoes import FIELD as ECHO_FIELD
from channels.whatsapp.echoes import WaEcho, parse_echoes
from channels.whatsapp.errors import GraphError, WindowClosed
from channels.whatsapp.parse import parse_webhook
from channels.whatsapp.payloads import MEDIA_KINDS, Change, WaError, WaMessage, WaStatus
from channels.whatsapp.referral import from_cloud
from channels.whatsapp.render import bound_parts, split_message, to_whatsapp_markdown
from channels.whatsapp.signature import verify_signature, verify_token_matches
from channels.whatsapp.transcribe import TranscriptionError, transcribers_for
from gateway.access import Access
from gateway.api.http import read_body
from gateway.api.models import HandshakeQuery, TemplateRequest, WhatsAppStartRequest
from gateway.api.operation import ApiRoute, parse_body, parse_query
from gateway.codec import bounded
from gateway.conversations import ConversationService
from gateway.delivery import Delivery, SendFailed, Template, TemplateSender, endpoint_address, provider_of
from gateway.directory import AgentDirectory
from gateway.errors import BadRequest, ConfigError, Conflict, Unauthorized
from gateway.events import ContactRef, Event, InboundMessage, now_ms
from gateway.limits import whatsapp_window_open
from gateway.metrics import Metrics
from gateway.sanitizer import MAX_ID, MAX_NAME, clip
from gateway.settings import Settings, WhatsAppNumber
from gateway.store.records import MessageRecord, OutboxItem, SessionRecord
from gateway.store.sql import Store
from gateway.types import Channel

log = logging.getLogger("gateway.whatsapp")

PROVIDER = "whatsapp"
UNROUTABLE = "_unroutable"
UNTRANSCRIBED = ("[voice note]", "[audio]")
WEBHOOK_ERROR = "webhook.error"
ECHO_AUTHOR = "whatsapp_business_app"  # the author of a coexistence echo (a human at the business)
ECHO_PAUSE = "echoPause"  # session.meta: {until} when an echo's pause ends by itself
WEBHOOK_REJECTED = "webhook.rejected"
MESSAGE_REVOKED = "message.revoked"
MESSAGE_REACTION = "message.reaction"
# Message types read into text and parts; any other (and Meta's `unsupported`) keeps its raw object.
UNDERSTOOD = MEDIA_KINDS | {
    "text",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "edit",
    "revoke",
}


@dataclass(frozen=True, slots=True)
class Number:
    agent_id: str
    config: WhatsAppNumber
    graph: GraphClient
    secret: str | None


class WhatsAppChannel:
    def __init__(
        self,
        env: Mapping[str, str],
        http: httpx.AsyncClient,
        *,
        access: Access,
        deliveries: dict[str, Delivery],
        directory: AgentDirectory,
        metrics: Metrics,
        service: ConversationService,
        settings: Settings,
        store: Store,
    ) -> None:
        self.access = access
        self.deliveries = deliveries
        self.directory = directory
        self.metrics = metrics
        self.service = service
        self.settings = settings
        self.store = store
        self.http = http
        self.numbers: dict[str, Number] = {}
        self.transcribers = transcribers_for(directory, env, http)
        for agent_id in directory.ids():
            agent = directory.get(agent_id)
            for cfg in agent.whatsapp:
                token = env.get(cfg.access_token_env, "")
                secret = env.get(cfg.app_secret_env) if cfg.app_secret_env else None
                if not token:
                    log.warning(
                        "whatsapp %s: %s is not set; sends will fail",
                        cfg.phone_number_id,
                        cfg.access_token_env,
                    )
                if not secret and not cfg.insecure_skip_signature:
                    log.warning(
                        "whatsapp %s: no app secret: its webhooks will be refused", cfg.phone_number_id
                    )
                if cfg.insecure_skip_signature:
                    log.warning(
                        "whatsapp %s: INSECURE: unsigned webhooks are accepted for this number",
                        cfg.phone_number_id,
                    )
                graph = GraphClient(http, base_url=cfg.graph_base_url, version=cfg.graph_version, token=token)
                if cfg.phone_number_id in self.numbers:
                    raise ConfigError(
                        f"agents.{agent_id}.whatsapp: phone_number_id {cfg.phone_number_id} is already "
                        f"configured for agent {self.numbers[cfg.phone_number_id].agent_id!r} "
                        "(a number answers for one agent; use dev_routes to send some senders elsewhere)"
                    )
                self.numbers[cfg.phone_number_id] = Number(agent_id, cfg, graph, secret)
        self._background: set[asyncio.Task[Any]] = set()
        self.secrets = sorted({n.secret for n in self.numbers.values() if n.secret})
        self.verify_tokens = [n.config.verify_token for n in self.numbers.values() if n.config.verify_token]

    def routes(self) -> list[BaseRoute]:
        return [
            ApiRoute(
                "/whatsapp/webhook",
                self.handshake,
                method="GET",
                summary="Meta subscription handshake (hub.verify_token)",
                query=HandshakeQuery,
                secured=False,
                produces="text/plain",
                errors=(403,),
            ),
            ApiRoute(
                "/whatsapp/webhook",
                self.webhook,
                method="POST",
                summary="WhatsApp Cloud API webhook (X-Hub-Signature-256)",
                raw_body={"application/json": {"type": "object"}},
                secured=False,
                errors=(400, 401, 413),
            ),
            ApiRoute(
                "/v1/sessions/{session_id}/template",
                self.send_template,
                method="POST",
                summary="Send an approved template (WhatsApp Cloud API, or a Twilio Content template)",
                body=TemplateRequest,
                ok=202,
                errors=(401, 404, 409, 413, 415),
            ),
            ApiRoute(
                "/v1/agents/{agent}/whatsapp/messages",
                self.start_conversation,
                method="POST",
                summary="Start a WhatsApp conversation with a template",
                body=WhatsAppStartRequest,
                ok=202,
                errors=(401, 403, 404, 413, 415),
            ),
        ]

    # ------------------------------------------------------------ inbound

    async def handshake(self, request: Request) -> Response:
        q = parse_query(request, HandshakeQuery)
        if q.mode == "subscribe" and verify_token_matches(q.verify_token, self.verify_tokens):
            return PlainTextResponse(q.challenge or "")
        return PlainTextResponse("verify token mismatch", status_code=403)

    async def webhook(self, request: Request) -> Response:
        raw = await read_body(request, self.settings.server.webhook_max_body_bytes)
        secret = verify_signature(raw, request.headers.get("x-hub-signature-256"), self.secrets)
        batch = parse_webhook(raw) if secret is not None or self._any_insecure() else None
        if batch is None:
            raise Unauthorized("invalid or missing X-Hub-Signature-256", code="invalid_signature")
        pnids = {c.phone_number_id for c in batch.objects if c.phone_number_id}
        owned = [self.numbers[p] for p in pnids if p in self.numbers]
        if secret is None:
            if not owned or not all(n.config.insecure_skip_signature for n in owned):
                raise Unauthorized("invalid or missing X-Hub-Signature-256", code="invalid_signature")
            log.warning("INSECURE: accepted an unsigned WhatsApp webhook for %s", ",".join(sorted(pnids)))
        elif any(n.secret != secret for n in owned):
            raise Unauthorized(
                "the signing app does not own every phone_number_id in this delivery",
                code="invalid_signature",
            )
        for problem in batch.problems:
            log.warning("whatsapp webhook: %s", problem)
        inbound, extras = self._inbound(batch.objects)
        if inbound:
            for result in await self.service.receive_many(inbound):
                m = result.message
                if m is not None and not m.pending and m.text in UNTRANSCRIBED and result.session.paused:
                    # Paused: no turn will transcribe it, but the operator still wants to read it.
                    task = asyncio.create_task(self.prepare(result.session, [m]))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
        for change, status in batch.statuses():
            await self._status(change, status)
        for job in extras:
            await job()
        return JSONResponse({"ok": True})

    def _any_insecure(self) -> bool:
        return any(n.config.insecure_skip_signature for n in self.numbers.values())

    def _route(self, pnid: str, sender: str) -> str:
        number = self.numbers[pnid]
        agent = self.directory.get(number.agent_id)
        target = agent.dev_routes.get(sender) or agent.dev_routes.get("+" + sender)
        return target if target and target in self.directory else number.agent_id

    def _inbound(self, changes: tuple[Change, ...]) -> tuple[list[InboundMessage], list[Any]]:
        """The messages to store (one transaction) and the follow-ups (reactions, edits, …)."""
        out: list[InboundMessage] = []
        extras: list[Any] = []
        for change in changes:
            pnid = change.phone_number_id
            routable = pnid is not None and pnid in self.numbers
            owner = self.numbers[pnid].agent_id if routable and pnid is not None else UNROUTABLE
            if change.errors:
                extras.append(self._webhook_errors(owner, change, change.errors))
            if change.field == ECHO_FIELD:
                echoes, problems = parse_echoes(change)
                for problem in problems:
                    log.warning("whatsapp echoes: %s", problem)
                for echo in echoes:
                    if len(echo.wamid) > MAX_ID or len(echo.to) > MAX_ID:  # cannot be stored
                        log.warning(
                            "whatsapp echo %s skipped: an id over %d characters", clip(echo.wamid, 64), MAX_ID
                        )
                        continue
                    if routable and pnid is not None:
                        extras.append(self._echo(pnid, echo))
                    else:
                        log.warning("whatsapp echo %s for unconfigured number %s ignored", echo.wamid, pnid)
            for m in change.messages:
                if not routable or pnid is None:
                    extras.append(self._unroutable(pnid, m))
                    continue
                agent = self._route(pnid, m.from_)
                why = _unusable(m)
                if why is not None:  # recorded as bad; its neighbours are stored, the delivery is 200
                    extras.append(self._rejected(agent, pnid, m, why))
                    continue
                if m.errors:
                    extras.append(self._webhook_errors(agent, change, m.errors, m))
                if m.revoke is not None:
                    # Nothing is said: the original's text goes, who and when stay in its meta.
                    extras.append(self._revoke(agent, m, m.revoke.original_wamid))
                    continue
                if m.reaction is not None and m.reaction.removed:
                    extras.append(self._unreact(agent, m, m.reaction.wamid))
                    continue
                endpoint = f"{PROVIDER}:{pnid}"
                kind = m.protocol_type
                turn = kind != "reaction" and m.system is None and m.edit is None
                if m.reaction is not None:
                    extras.append(
                        self._annotate(
                            m.reaction.wamid,
                            "reaction",
                            {"emoji": m.reaction.emoji, "from": m.sender_key, "at": m.timestamp},
                        )
                    )
                if m.edit is not None:
                    extras.append(
                        self._annotate(m.edit.original_wamid, "edit", {"text": m.text, "wamid": m.wamid})
                    )
                if m.system is not None and m.system.new_wa_id and len(m.system.new_wa_id) <= MAX_ID:
                    extras.append(self._rekey(m.sender_key, m.system.new_wa_id))
                out.append(
                    InboundMessage(
                        agent=agent,
                        channel=Channel.WHATSAPP,
                        contact=ContactRef(
                            channel=Channel.WHATSAPP,
                            address=m.sender_key,
                            name=None if m.contact_name is None else clip(m.contact_name, MAX_NAME),
                        ),
                        text=m.text,
                        type=kind,
                        provider_message_id=m.wamid,
                        parts=tuple(m.parts),
                        endpoint=endpoint,
                        turn=turn,
                        extra=_extra(m),
                        message_meta=_meta(m),
                    )
                )
        return out, extras

    def _rejected(self, agent: str, pnid: str, m: WaMessage, problem: str) -> Any:
        """A message the store cannot hold as it is: an event and a log line keep what it said."""
        data = {
            "provider": PROVIDER,
            "phoneNumberId": pnid,
            "providerMessageId": clip(m.wamid, MAX_ID),
            "from": clip(m.sender_key, MAX_ID),
            "type": m.type,
            "text": clip(m.text, 4096),
            "reason": problem,
        }

        async def record() -> None:
            log.warning(
                "whatsapp message %s rejected (%s): acknowledged, recorded as webhook.rejected",
                data["providerMessageId"],
                problem,
                extra={"phone_number_id": pnid},
            )
            await self.service.record_events(
                [Event(type=WEBHOOK_REJECTED, agent=agent, channel=str(Channel.WHATSAPP), data=data)]
            )

        return record

    def _webhook_errors(
        self, agent: str, change: Change, errors: tuple[WaError, ...], m: WaMessage | None = None
    ) -> Any:
        """`value.errors` (account level) or `messages[].errors`: an event, a log line, a count."""
        level = "account" if m is None else "message"
        shown = [_error_json(e) for e in errors]
        data: dict[str, Any] = {
            "provider": PROVIDER,
            "level": level,
            "phoneNumberId": change.phone_number_id,
            "wabaId": change.waba_id,
            "errors": shown,
        }
        if m is not None:
            data["providerMessageId"] = m.wamid
            data["from"] = m.sender_key

        async def record() -> None:
            for e in errors:
                log.warning(
                    "whatsapp webhook error (%s level) %s %s: %s",
                    level,
                    e.code,
                    e.title,
                    e.details or e.message,
                    extra={"phone_number_id": change.phone_number_id},
                )
                self.metrics.webhook_errors.labels(PROVIDER, level, error_label(e.code)).inc()
            await self.service.record_events(
                [Event(type=WEBHOOK_ERROR, agent=agent, channel=str(Channel.WHATSAPP), data=data)]
            )

        return record

    def _echo(self, pnid: str, e: WaEcho) -> Any:
        """The business wrote from the WhatsApp Business app: a human message, and a pause."""
        number = self.numbers[pnid]
        agent = self._route(pnid, e.to)

        async def record() -> None:
            store = self.store
            if e.revoked_wamid is not None:
                who = {"by": ECHO_AUTHOR, "at": e.timestamp, "wamid": e.wamid}
                await self._hide_revoked(agent, e.revoked_wamid, who)
                return
            meta: dict[str, Any] = {"echo": True, "whatsappType": e.type}
            if e.type not in UNDERSTOOD:
                meta["raw"] = bounded(dict(e.raw))
            try:
                session, message_id, _ = await store.record_echo(
                    agent_id=agent,
                    contact=ContactRef(channel=Channel.WHATSAPP, address=e.to),
                    endpoint=f"{PROVIDER}:{pnid}",
                    provider_message_id=e.wamid,
                    text=e.text,
                    parts=e.parts,
                    author=ECHO_AUTHOR,
                    meta=meta,
                )
            except IntegrityError:
                return  # the same echo stored by a concurrent delivery
            if message_id is None or not number.config.echo_pauses_ai:
                return
            await self.service.set_paused(agent, True, contact=e.to, by=ECHO_AUTHOR)
            if number.config.echo_resume_minutes:
                # Durable: the limits sweeper resumes the contact once this time has passed.
                until = now_ms() + int(number.config.echo_resume_minutes * 60_000)
                latest = await store.session(session.id) or session
                await self.service.update_session(
                    session.id, meta={**latest.meta, ECHO_PAUSE: {"until": until}}
                )

        return record

    def _revoke(self, agent: str, m: WaMessage, original: str) -> Any:
        async def revoke() -> None:
            who = {"by": m.sender_key, "at": m.timestamp, "wamid": m.wamid}
            await self._hide_revoked(agent, original, who)

        return revoke

    async def _hide_revoked(self, agent: str, original: str, who: dict[str, Any]) -> None:
        """A revoke (by the contact, or by the business from its app): the message loses its
        text, keeps who and when, and `message.revoked` tells the feeds."""
        store = self.store
        target = await store.find_message(channel=str(Channel.WHATSAPP), provider_message_id=original)
        if target is None:
            log.info("whatsapp revoke of unknown message %s ignored", original)
            return
        await store.hide_messages(
            [target.id],
            meta={"revoked": who},
            events=[
                Event(
                    type=MESSAGE_REVOKED,
                    agent=agent,
                    session_id=target.session_id,
                    channel=str(Channel.WHATSAPP),
                    data={"messageId": target.id, "providerMessageId": original, **who},
                )
            ],
        )

    def _unreact(self, agent: str, m: WaMessage, wamid: str) -> Any:
        """A reaction taken back: the note on the message goes, and the reaction itself."""

        async def unreact() -> None:
            store = self.store
            target = await store.find_message(channel=str(Channel.WHATSAPP), provider_message_id=wamid)
            if target is None:
                return
            await self.service.annotate_message(
                channel=str(Channel.WHATSAPP), provider_message_id=wamid, key="reaction", value=None
            )
            earlier = [
                r.id
                for r in await store.messages(target.session_id)
                if r.type == "reaction"
                and (r.meta or {}).get("reactionTo") == wamid
                and not (r.meta or {}).get("hidden")
            ]
            await store.hide_messages(
                earlier,
                meta={"reactionRemoved": {"by": m.sender_key, "at": m.timestamp, "wamid": m.wamid}},
                events=[
                    Event(
                        type=MESSAGE_REACTION,
                        agent=agent,
                        session_id=target.session_id,
                        channel=str(Channel.WHATSAPP),
                        data={
                            "messageId": target.id,
                            "providerMessageId": wamid,
                            "emoji": "",
                            "removed": True,
                            "from": m.sender_key,
                        },
                    )
                ],
            )

        return unreact

    def _unroutable(self, pnid: str | None, m: WaMessage) -> Any:
        async def record() -> None:
            log.warning(
                "whatsapp message %s for unconfigured number %s: acknowledged, not routed", m.wamid, pnid
            )
            await self.service.record_events(
                [
                    Event(
                        type="webhook.unroutable",
                        agent=UNROUTABLE,
                        channel=str(Channel.WHATSAPP),
                        data={"phoneNumberId": pnid, "providerMessageId": m.wamid, "from": m.from_},
                    )
                ]
            )

        return record

    def _annotate(self, wamid: str, key: str, value: dict[str, Any]) -> Any:
        async def annotate() -> None:
            await self.service.annotate_message(
                channel=str(Channel.WHATSAPP), provider_message_id=wamid, key=key, value=value
            )

        return annotate

    def _rekey(self, old: str, new: str) -> Any:
        async def rekey() -> None:
            if await self.service.rekey_contact(channel=str(Channel.WHATSAPP), old=old, new=new):
                log.info("whatsapp contact %s changed number to %s", old, new)

        return rekey

    async def _status(self, change: Change, status: WaStatus) -> None:
        error = None
        if status.error is not None:
            e = status.error
            error = {"code": e.code, "title": e.title, "message": e.message, "details": e.details}
        state = "failed" if status.status == "failed" else status.status
        await self.service.delivery_status(
            channel=str(Channel.WHATSAPP),
            provider_message_id=status.wamid,
            status=state,
            error=error,
            idempotency_key=status.biz_opaque_callback_data,
            close_window=state == "failed" and error is not None and error.get("code") == 131047,
        )
        if status.pricing or status.conversation:
            priced = await self.service.record_pricing(
                channel=str(Channel.WHATSAPP),
                provider_message_id=status.wamid,
                idempotency_key=status.biz_opaque_callback_data,
                pricing=status.pricing,
                conversation=status.conversation,
            )
            if priced is not None:
                agent, category, kind = priced
                self.metrics.whatsapp_priced.labels(agent, category, kind or "unknown").inc()

    # ----------------------------------------------------------- delivery

    def _number_of(self, session: SessionRecord | OutboxItem) -> Number:
        pnid = endpoint_address(session)
        number = self.numbers.get(pnid)
        if number is None:
            raise SendFailed("unknown_number", f"no WhatsApp number {pnid!r} is configured", retryable=False)
        return number

    def render(
        self,
        session: SessionRecord,
        text: str,
        reply_to: MessageRecord | None,
        *,
        max_parts: int | None = None,
    ) -> list[dict[str, Any]]:
        to = session.contact.address if session.contact else ""
        parts = split_message(to_whatsapp_markdown(text), 4096)
        if max_parts is not None and len(parts) > max(1, max_parts):
            log.warning(
                "a reply of %d WhatsApp messages cut to %d (limits.max_reply_messages)",
                len(parts),
                max(1, max_parts),
                extra={"session_id": session.id},
            )
            parts = bound_parts(parts, max(1, max_parts), 4096)
        wamid = reply_to.provider_message_id if reply_to is not None else None
        return [text_payload(to, part, reply_to=wamid if i == 0 else None) for i, part in enumerate(parts)]

    async def send(self, item: OutboxItem) -> str:
        number = self._number_of(item)
        # The key comes back on every status webhook: after a crash it proves a part went out.
        payload = {**item.payload, "biz_opaque_callback_data": item.idempotency_key}
        try:
            return await number.graph.send(number.config.phone_number_id, payload)
        except GraphError as exc:
            cause = exc.__cause__
            maybe_sent = exc.title == "timeout" and not isinstance(cause, httpx.ConnectTimeout)
            raise SendFailed(
                str(exc.code or exc.status or "network"),
                exc.message,
                retryable=exc.retryable,
                retry_after=exc.retry_after,
                details={"title": exc.title, "details": exc.details} if exc.details else None,
                closes_window=isinstance(exc, WindowClosed),
                maybe_sent=maybe_sent,
            ) from None

    async def typing(self, session: SessionRecord, message: MessageRecord) -> None:
        if message.provider_message_id:
            number = self._number_of(session)
            await number.graph.mark_read(
                number.config.phone_number_id, message.provider_message_id, typing=True
            )

    def window_open(self, session: SessionRecord, now_ms: int) -> bool:
        return whatsapp_window_open(session, now_ms)

    async def prepare(self, session: SessionRecord, pending: list[MessageRecord]) -> list[MessageRecord]:
        """Transcribe voice notes before the agent reads them (`[voice note]` without a transcriber)."""
        transcriber = self.transcribers.get(session.agent_id)
        out = []
        for m in pending:
            media = next((p for p in m.parts if isinstance(p, dict) and p.get("kind") == "audio"), None)
            if transcriber is None or media is None or m.text not in UNTRANSCRIBED or not media.get("id"):
                out.append(m)
                continue
            try:
                number = self._number_of(session)
                audio, mime = await number.graph.download_media(
                    str(media["id"]), number.config.phone_number_id, max_bytes=16 * 1024 * 1024
                )
                text = await transcriber.transcribe(
                    audio, mime or str(media.get("mime_type") or "audio/ogg"), "voice.ogg"
                )
            except (GraphError, TranscriptionError, SendFailed) as exc:
                log.warning("voice note %s not transcribed: %s", m.id, exc, extra={"session_id": session.id})
                out.append(m)
                continue
            new_text = f"{m.text} {text.strip()}"
            await self.service.set_transcript(m.id, new_text)
            out.append(MessageRecord(**{**_fields(m), "text": new_text}))
        return out

    # ---------------------------------------------------------- templates

    async def send_template(self, request: Request) -> JSONResponse:
        principal = await self.access.key(request)
        session = await self.access.session(principal, request.path_params["session_id"])
        # Whichever provider carries the session builds the template (Graph or Twilio Content).
        sender = self.deliveries.get(provider_of(session) or "")
        if sender is None or not isinstance(sender, TemplateSender):
            raise Conflict(
                "templates are sent on WhatsApp and Twilio messaging sessions only", code="not_whatsapp"
            )
        if not session.active:
            raise Conflict(f"session {session.id} has ended", code="session_ended")
        body = await parse_body(request, TemplateRequest, limit=65_536)
        message_id = await self.service.send_template(session, sender.template(session, body.spec()))
        return JSONResponse(
            {"sessionId": session.id, "messageId": message_id, "status": "queued"}, status_code=202
        )

    async def start_conversation(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent"]
        principal = await self.access.key(request)
        agent = self.access.agent(principal, agent_id)
        body = await parse_body(request, WhatsAppStartRequest, limit=65_536)
        to = body.to.lstrip("+")
        if not to:
            raise BadRequest("`to` (the contact's WhatsApp number or user id) is required", code="missing_to")
        pnid = body.phoneNumberId or (agent.whatsapp[0].phone_number_id if agent.whatsapp else None)
        if pnid is None or pnid not in self.numbers or self.numbers[pnid].agent_id != agent_id:
            raise BadRequest(f"agent {agent_id!r} has no WhatsApp number {pnid!r}", code="unknown_number")
        spec = body.template.spec()
        _template(spec)  # refuse a bad template before any session exists
        session = await self.service.start_session(
            agent_id=agent_id,
            channel=Channel.WHATSAPP,
            contact=ContactRef(channel=Channel.WHATSAPP, address=to),
            direction="outbound",
            metadata=body.metadata,
            endpoint=f"{PROVIDER}:{pnid}",
        )
        message_id = await self.service.send_template(session, self.template(session, spec))
        return JSONResponse(
            {"sessionId": session.id, "messageId": message_id, "status": "queued"}, status_code=202
        )

    def template(self, session: SessionRecord, spec: dict[str, Any]) -> Template:
        """A Cloud API template message: `{name, language, components?}`."""
        name, language, components = _template(spec)
        to = session.contact.address if session.contact else ""
        return Template(
            name=name,
            payload=template_payload(to, name, language, components),
            part={"kind": "template", "name": name, "language": language, "components": components},
        )


def _template(spec: dict[str, Any]) -> tuple[str, str, list[Any]]:
    name = spec.get("name")
    language = spec.get("language", "en_US")
    components = spec.get("components") or []
    if isinstance(language, dict):
        language = language.get("code")
    if not isinstance(name, str) or not name or len(name) > 512:
        raise BadRequest("`name` of the template is required", code="invalid_template")
    if not isinstance(language, str) or not language or not isinstance(components, list):
        raise BadRequest(
            "`language` must be a code like en_US and `components` a list", code="invalid_template"
        )
    return name, language, components


def _unusable(m: WaMessage) -> str | None:
    """Why a message cannot be stored as it is (ids that do not fit their columns), or None."""
    if len(m.wamid) > MAX_ID:
        return f"`id` is longer than {MAX_ID} characters"
    if len(m.sender_key) > MAX_ID:
        return f"`from` is longer than {MAX_ID} characters"
    return None


def _extra(m: WaMessage) -> dict[str, Any]:
    contact: dict[str, Any] = {"id": m.sender_key, "name": m.contact_name}
    if m.contact_username:
        contact["username"] = m.contact_username
    out: dict[str, Any] = {"providerMessageId": m.wamid, "contact": contact}
    if m.type != m.protocol_type:
        out["whatsappType"] = m.type
    if m.context_wamid:
        out["replyTo"] = m.context_wamid
    if m.reaction is not None:
        out["reaction"] = {"messageId": m.reaction.wamid, "emoji": m.reaction.emoji}
    if m.system is not None:
        out["system"] = {"type": m.system.type, "newWaId": m.system.new_wa_id}
    out.update(_facts(m))
    return out


def _facts(m: WaMessage) -> dict[str, Any]:
    """What a message says about itself, on the event and in the stored message alike."""
    out: dict[str, Any] = {}
    if m.forwarded:
        out["forwarded"] = True
    if m.frequently_forwarded:
        out["forwarded"] = True
        out["frequentlyForwarded"] = True
    if referral := from_cloud(m.referral):
        out["referral"] = referral
    if m.errors:
        out["errors"] = [_error_json(e) for e in m.errors]
    return out


def _meta(m: WaMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"whatsappType": m.type, **_facts(m)}
    if m.context_wamid:
        out["replyTo"] = m.context_wamid
    if m.contact_username:
        out["username"] = m.contact_username
    if m.reaction is not None:
        out["reactionTo"] = m.reaction.wamid
    if m.type not in UNDERSTOOD:
        out["raw"] = bounded(dict(m.raw))  # a type we cannot read yet: keep what Meta sent
    return out


def _error_json(e: WaError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": e.code, "title": e.title, "message": e.message}
    if e.details:
        out["details"] = e.details
    if e.href:
        out["href"] = e.href
    return out


def error_label(code: int | None) -> str:
    """A provider error code as a metrics label (bounded: odd values share one label)."""
    return str(code) if code is not None and 0 <= code < 10_000_000 else "other"


def _fields(m: MessageRecord) -> dict[str, Any]:
    return {f: getattr(m, f) for f in MessageRecord.__dataclass_fields__}
