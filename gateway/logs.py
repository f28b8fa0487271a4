"""Structured logs: one JSON object a line, with session and message ids when known.

Call sites pass ids through `extra={"session_id": …, "message_id": …}`.
"""

from __future__ import annotations

import json
import logging
import time

from gateway.redact import RedactingFilter, Redactor

_FIELDS = ("session_id", "message_id", "agent", "channel", "provider_message_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_text:  # already formatted (and redacted) by RedactingFilter
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(
    level: str = "info",
    as_json: bool = True,
    *,
    redactor: Redactor | None = None,
    access_log: bool = False,
) -> None:
    """One handler on the root logger; every record passes the redacting filter first.

    uvicorn's request lines (`uvicorn.access`, and the WebSocket lines it logs on
    `uvicorn.error`) carry the path with its query string: the filter masks tokens
    and keys there too. The access log is off unless `access_log` is set.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter(redactor or Redactor()))
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
