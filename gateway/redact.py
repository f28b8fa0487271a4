"""Secrets out of everything the gateway prints: URLs, request lines, log records.

One `Redactor` is built at start-up with the secret values the configuration names
(admin key, `*_env` credentials, the database password) and is installed as a
filter on the log handler, so every record is scrubbed whoever logged it (our code,
uvicorn's request lines, a library's exception text). Three rules, in order:

- a password in a URL's userinfo (`scheme://user:PASSWORD@host`) becomes `***`;
- the value of a query parameter whose name says it is a secret (`token`, `key`,
  `api_key`, `access_token`, `password`, `secret`, `signature`, …) becomes `***`;
- the gateway's own credential shapes (`sk_…` API keys, `tk_…` browser tokens) and
  every known secret value are replaced wherever they appear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings

MASK = "***"
# Values shorter than this are not treated as secrets: replacing "x" everywhere would
# destroy every log line and protect nothing.
MIN_SECRET_LEN = 6

_SECRET_PARAM = (
    r"(?:[A-Za-z0-9_.\-]*(?:token|key|secret|password|passwd|pwd|signature|sig|auth|credential)"
    r"[A-Za-z0-9_.\-]*|code)"
)
_QUERY = re.compile(rf"(?P<lead>[?&;](?P<name>{_SECRET_PARAM})=)(?P<value>[^&;#\s\"'<>]+)", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<lead>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s\"'<>]*:)(?P<pw>[^@/\s\"'<>]+)(?=@)")
_SHAPES = re.compile(r"\b(?P<kind>sk|tk)_[A-Za-z0-9_\-]{8,}")
_AUTH_HEADER = re.compile(r"(?P<lead>\b(?:Bearer|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{8,})", re.IGNORECASE)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= MIN_SECRET_LEN:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        return self.text(text)

    def text(self, text: str) -> str:
        if not text:
            return text
        out = _USERINFO.sub(lambda m: m["lead"] + MASK, text)
        out = _QUERY.sub(lambda m: m["lead"] + MASK, out)
        out = _AUTH_HEADER.sub(lambda m: m["lead"] + MASK, out)
        out = _SHAPES.sub(lambda m: f"{m['kind']}_{MASK}", out)
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in out:
                out = out.replace(secret, MASK)
        return out

    def url(self, url: str) -> str:
        """A URL fit to print: no password, no secret query values."""
        return self.text(url)


# Without any configuration: the rules that need no known values.
default = Redactor()


def redact_url(url: str) -> str:
    return default.url(url)


def secrets_from(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Every secret value the configuration points at (by name) or holds."""
    found: list[str | None] = [settings.server.admin_key, database_password(settings.server.database_url)]
    names: list[str | None] = [k.key_env for k in settings.api_keys]
    for agent in settings.agents.values():
        names.append(agent.llm.api_key_env if agent.llm else None)
        names.append(agent.webhook.secret_env if agent.webhook else None)
        names.append(agent.transcriber.api_key_env if agent.transcriber else None)
        for number in agent.whatsapp:
            names += [number.access_token_env, number.app_secret_env]
            found.append(number.verify_token)
        for tw in agent.twilio:
            names += [tw.auth_token_env]
    found += [env.get(n) for n in names if n]
    return [s for s in found if s]


def database_password(url: str) -> str | None:
    m = _USERINFO.search(url)
    return m["pw"] if m else None


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) through a `Redactor`.

    Installed on the handler, so it sees records of every logger that reaches it.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        record.msg = self.redactor.text(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        return True
