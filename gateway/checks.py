"""Start-up checks: a set-up that cannot work is said in one line, before the first turn fails.

`gateway serve` logs each finding as a warning and starts anyway (the operator may
be fixing one channel while the others serve); `gateway check` prints them and
exits non-zero when any is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.settings import Settings


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    key: str  # where in gateway.toml (or which variable) to look
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def check_settings(settings: Settings, env: Mapping[str, str]) -> list[Finding]:
    out: list[Finding] = []

    def unset(name: str | None) -> bool:
        return bool(name) and not env.get(name or "")

    if not settings.server.admin_key and not settings.api_keys:
        out.append(
            Finding(
                "warning",
                "server.admin_key",
                "no admin key (set GATEWAY_ADMIN_KEY): the console cannot be signed into and the API "
                "accepts only keys made with `gateway keys create`",
            )
        )
    for i, key in enumerate(settings.api_keys):
        if key.key_env and unset(key.key_env) and not key.sha256:
            out.append(Finding("error", f"api_keys[{i}].key_env", f"{key.key_env} is not set"))
    if not settings.agents:
        out.append(
            Finding(
                "warning",
                "agents",
                "no agents configured: only agent processes (/v1/agents/ws) can add one",
            )
        )
    twilio_agents = []
    for agent_id, agent in settings.agents.items():
        where = f"agents.{agent_id}"
        if "answer" not in agent.model_fields_set:
            out.append(
                Finding(
                    "warning",
                    f"{where}.answer",
                    'not set, so it answers with echo (set answer = "llm", "webhook" or "process")',
                )
            )
        if not (agent.allowed_origins or agent.whatsapp or agent.twilio):
            out.append(
                Finding(
                    "warning",
                    where,
                    "no channel (allowed_origins, whatsapp or twilio): reachable only through the API "
                    "with a key",
                )
            )
        if agent.llm and unset(agent.llm.api_key_env):
            out.append(Finding("error", f"{where}.llm.api_key_env", f"{agent.llm.api_key_env} is not set"))
        if agent.webhook and unset(agent.webhook.secret_env):
            out.append(
                Finding("error", f"{where}.webhook.secret_env", f"{agent.webhook.secret_env} is not set")
            )
        if agent.transcriber and unset(agent.transcriber.api_key_env):
            out.append(
                Finding(
                    "error", f"{where}.transcriber.api_key_env", f"{agent.transcriber.api_key_env} is not set"
                )
            )
        for n, number in enumerate(agent.whatsapp):
            at = f"{where}.whatsapp[{n}]"
            if unset(number.access_token_env):
                out.append(
                    Finding(
                        "error", f"{at}.access_token_env", f"{number.access_token_env} is not set: sends fail"
                    )
                )
            if number.insecure_skip_signature:
                out.append(
                    Finding("warning", f"{at}.insecure_skip_signature", "unsigned webhooks are accepted")
                )
            elif not number.app_secret_env:
                out.append(
                    Finding(
                        "error",
                        f"{at}.app_secret_env",
                        f"number {number.phone_number_id} has no app secret: its webhooks are refused",
                    )
                )
            elif unset(number.app_secret_env):
                out.append(
                    Finding(
                        "error",
                        f"{at}.app_secret_env",
                        f"{number.app_secret_env} is not set: webhooks for {number.phone_number_id} "
                        "are refused",
                    )
                )
        for n, tw in enumerate(agent.twilio):
            at = f"{where}.twilio[{n}]"
            for field, name in (
                ("account_sid_env", tw.account_sid_env),
                ("auth_token_env", tw.auth_token_env),
            ):
                if unset(name):
                    out.append(
                        Finding("error", f"{at}.{field}", f"{name} is not set: Twilio requests are refused")
                    )
        if agent.twilio:
            twilio_agents.append(agent_id)
    if twilio_agents and not settings.server.public_url and not settings.server.trust_proxy:
        out.append(
            Finding(
                "warning",
                "server.public_url",
                f"not set while {', '.join(twilio_agents)} answer on Twilio: no status callbacks are "
                "requested and signatures are checked against the address the gateway sees (set the "
                "https address Twilio calls, or trust_proxy = true behind a proxy)",
            )
        )
    return out
