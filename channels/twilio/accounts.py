"""The Twilio numbers of every agent, each with its account's REST client and auth token."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

import httpx
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

from channels.twilio.client import TwilioClient
from channels.whatsapp.transcribe import transcribers_for
from gateway.api.http import read_body
from gateway.directory import AgentDirectory
from gateway.errors import BadRequest, ConfigError
from gateway.sanitizer import clean
from gateway.settings import TwilioNumber

log = logging.getLogger("gateway.twilio")

PROVIDER = "twilio"  # outbox provider and endpoint prefix of messaging sessions
VOICE = "twilio-voice"  # endpoint prefix of call sessions (no outbox: calls speak live)
FORM_LIMIT = 65_536
# How /openapi.json describes a Twilio webhook's body.
TWILIO_FORM = {
    "application/x-www-form-urlencoded": {"type": "object", "additionalProperties": {"type": "string"}}
}


@dataclass(frozen=True, slots=True)
class Binding:
    agent_id: str
    config: TwilioNumber
    client: TwilioClient
    token: str


class TwilioAccounts:
    """Lookup by number (`+1555…` or `whatsapp:+1555…`); one number answers for one agent."""

    def __init__(self, env: Mapping[str, str], http: httpx.AsyncClient, *, directory: AgentDirectory) -> None:
        self.directory = directory
        self.by_number: dict[str, Binding] = {}
        self.transcribers = transcribers_for(directory, env, http)
        for agent_id in directory.ids():
            for cfg in directory.get(agent_id).twilio:
                sid = env.get(cfg.account_sid_env, "")
                token = env.get(cfg.auth_token_env, "")
                if not sid or not token:
                    log.warning(
                        "twilio %s: %s or %s is not set; its webhooks will be refused and sends fail",
                        cfg.number,
                        cfg.account_sid_env,
                        cfg.auth_token_env,
                    )
                if cfg.number in self.by_number:
                    raise ConfigError(
                        f"agents.{agent_id}.twilio: number {cfg.number} is already configured for agent "
                        f"{self.by_number[cfg.number].agent_id!r} (a number answers for one agent; "
                        "use dev_routes to send some callers elsewhere)"
                    )
                client = TwilioClient(http, base_url=cfg.api_base_url, account_sid=sid, auth_token=token)
                self.by_number[cfg.number] = Binding(agent_id, cfg, client, token)
        self.tokens = sorted({b.token for b in self.by_number.values() if b.token})

    def get(self, number: str | None) -> Binding | None:
        return self.by_number.get(number or "")

    def route(self, binding: Binding, caller: str) -> str:
        """The agent that answers `caller` on this number: a dev route first, else the number's agent."""
        agent = self.directory.get(binding.agent_id)
        bare = caller.removeprefix("whatsapp:")
        target = agent.dev_routes.get(bare) or agent.dev_routes.get(caller)
        return target if target and target in self.directory else binding.agent_id

    def tokens_for(self, account_sid: str | None) -> list[str]:
        """The auth tokens to check a webhook against: its account's, or every one when unknown."""
        mine = sorted({b.token for b in self.by_number.values() if b.client.account_sid == account_sid})
        return [t for t in mine if t] or self.tokens

    def voice_numbers(self, agent_id: str) -> list[Binding]:
        return [b for b in self.by_number.values() if b.agent_id == agent_id and not b.config.whatsapp]


def clean_form(form: ImmutableMultiDict[str, str]) -> ImmutableMultiDict[str, str]:
    """A verified form made safe to store (NULs dropped; sanitizer.py): only after the
    signature check, which must see the values exactly as Twilio signed them."""
    pairs = form.multi_items()
    if not any("\x00" in k or "\x00" in v for k, v in pairs):
        return form
    return ImmutableMultiDict([(clean(k), clean(v)) for k, v in pairs])


async def read_form(request: Request) -> ImmutableMultiDict[str, str]:
    """A Twilio webhook's form body (bounded), as a multi-dict for the signature check."""
    raw = await read_body(request, FORM_LIMIT)
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if raw and ctype != "application/x-www-form-urlencoded":
        raise BadRequest(
            f"expected Content-Type: application/x-www-form-urlencoded (got {ctype or 'none'!r})",
            code="unsupported_media_type",
            status=415,
        )
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8", code="invalid_form") from None
    return ImmutableMultiDict(pairs)
