"""Settings, built once from `gateway.toml` plus `GATEWAY_*` variables and passed down.

Nothing here reads the environment or the disk at import time: `load_settings`
does, once, in the CLI; tests call `Settings.from_dict`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from gateway.errors import ConfigError
from gateway.redact import redact_url

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///gateway.db"
CONFIG_FILE = "gateway.toml"  # used from the working directory when no other is named
DATABASE_URL_FORMS = "postgresql://user:password@host:5432/name or sqlite:///path/to/gateway.db"
# libpq's sslmode, as hosted PostgreSQL URLs carry it, in asyncpg's spelling (`ssl`).
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


def normalize_database_url(url: str) -> str:
    """The URL as the async engine needs it: `postgres://` and `postgresql://` go to
    asyncpg, `sqlite://` to aiosqlite, libpq's `sslmode` becomes asyncpg's `ssl`."""
    try:
        parsed: URL = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL; expected {DATABASE_URL_FORMS}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "asyncpg"):
            raise ValueError(
                f"the gateway talks to PostgreSQL through asyncpg, not {driver}: write {DATABASE_URL_FORMS}"
            )
        parsed = parsed.set(drivername="postgresql+asyncpg")
        sslmode = parsed.query.get("sslmode")
        if isinstance(sslmode, str) and sslmode in _SSLMODES:
            parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": sslmode})
    elif backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise ValueError(
                f"the gateway opens SQLite through aiosqlite, not {driver}: write {DATABASE_URL_FORMS}"
            )
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database {backend!r}; expected {DATABASE_URL_FORMS}")
    return parsed.render_as_string(hide_password=False)


LOCAL_ORIGINS = ["http://localhost:*", "http://127.0.0.1:*"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmConfig(_Model):
    base_url: str = "https://api.openai.com/v1"
    model: str
    api_key_env: str | None = None
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    request_timeout_seconds: float = Field(default=60.0, gt=0)
    first_token_timeout_seconds: float = Field(default=30.0, gt=0)
    history_budget_chars: int = Field(default=24_000, gt=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)


class ToolConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str | None = None
    ephemeral: bool = False
    timeout_seconds: float = Field(default=30.0, gt=0)


class WebhookConfig(_Model):
    url: str
    secret_env: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    history_messages: int = Field(default=20, ge=0)


class LimitsConfig(_Model):
    # Session limits of every session but a call (calls: `phone.*`); 0 disables one.
    idle_timeout_seconds: float = Field(default=7200, ge=0)
    idle_warning_seconds: float = Field(default=60, ge=0)
    idle_grace_seconds: float = Field(default=0, ge=0)
    max_duration_seconds: float = Field(default=0, ge=0)
    max_text_chars: int = Field(default=4096, gt=0)
    # WhatsApp (Cloud API): at most this many messages per reply (every message is billed); 0: no bound.
    max_reply_messages: int = Field(default=0, ge=0)
    max_tool_rounds: int = Field(default=5, ge=0)
    history_conversations: int = Field(default=5, ge=0)
    history_messages: int = Field(default=20, ge=0)
    process_reconnect_seconds: float = Field(default=30.0, ge=0)
    process_reply_timeout_seconds: float = Field(default=120.0, gt=0)


END_CALL = "endCall"
TRANSFER_TO_HUMAN = "transferToHuman"
CALL_TOOLS = frozenset({END_CALL, TRANSFER_TO_HUMAN})
END_CALL_TOOL: dict[str, Any] = {
    "name": END_CALL,
    "description": "Hang up the phone call once your current reply has been said "
    "(say goodbye in that reply).",
    "parameters": {"type": "object", "properties": {}},
}
TRANSFER_TO_HUMAN_TOOL: dict[str, Any] = {
    "name": TRANSFER_TO_HUMAN,
    "description": "Transfer the phone call to a human colleague once your current reply has been "
    "said (tell the caller you are connecting them).",
    "parameters": {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Why, for the colleague."}},
    },
}

REQUEST_HUMAN = "request_human"
REQUEST_HUMAN_TOOL: dict[str, Any] = {
    "name": REQUEST_HUMAN,
    "description": "Hand the conversation to a human operator when you cannot help "
    "or the user asks for a person.",
    "parameters": {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "Why a human is needed, for the operator."}
        },
        "required": ["reason"],
    },
}


class WhatsAppNumber(_Model):
    """One WhatsApp Business number an agent answers on."""

    phone_number_id: str = Field(pattern=r"^[0-9]{5,32}$")
    access_token_env: str
    app_secret_env: str | None = None
    verify_token: str | None = None
    graph_base_url: str = "https://graph.facebook.com"
    graph_version: str = Field(default="v21.0", pattern=r"^v[0-9]+\.[0-9]+$")
    insecure_skip_signature: bool = False  # accept unsigned webhooks for this number (dev only; logged)
    # Coexistence: the business answering from the WhatsApp Business app pauses the AI for
    # that contact; with `echo_resume_minutes`, the AI takes over again that long after.
    echo_pauses_ai: bool = True
    echo_resume_minutes: float = Field(default=0, ge=0)


class TwilioNumber(_Model):
    """One Twilio number an agent answers on: SMS/MMS and voice, or a `whatsapp:+…` sender."""

    number: str = Field(pattern=r"^(whatsapp:)?\+[1-9][0-9]{4,15}$")
    account_sid_env: str = "TWILIO_ACCOUNT_SID"
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    api_base_url: str = "https://api.twilio.com"
    # Phone calls: emit `call.ringing` and let a connected agent process accept or reject.
    ringing: bool = False

    @property
    def whatsapp(self) -> bool:
        return self.number.startswith("whatsapp:")

    @property
    def e164(self) -> str:
        return self.number.removeprefix("whatsapp:")


class PhoneConfig(_Model):
    """How an agent sounds and behaves on a phone call (Twilio ConversationRelay)."""

    language: str = "en-US"
    voice: str | None = None
    tts_provider: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None
    interruptible: Literal["any", "speech", "dtmf", "none"] = "any"
    dtmf_detection: bool = True
    hints: list[str] = Field(default_factory=list)
    # Extra <ConversationRelay> attributes, passed through as written (camelCase).
    relay_attributes: dict[str, str] = Field(default_factory=dict)
    # Session limits for calls (0 disables one), as in the product docs.
    max_duration_seconds: float = Field(default=600, ge=0)
    idle_timeout_seconds: float = Field(default=60, ge=0)
    idle_warning_seconds: float = Field(default=15, ge=0)
    idle_grace_seconds: float = Field(default=10, ge=0)
    # Said (not stored) at each idle warning, e.g. "Are you still there?"; none by default.
    idle_message: str | None = None
    # Said (not stored) when a turn fails, so the caller is not left in silence.
    error_message: str | None = "Sorry, I could not answer that. Could you say it again?"
    # Screen every call to the agent's numbers with `call.ringing` (as `ringing` on a number
    # does for that number); an agent process can turn it on when it registers.
    ringing: bool = False
    # How long `call.ringing` waits for an agent process to accept or reject (then accepts).
    ringing_timeout_seconds: float = Field(default=5, gt=0)
    # How long a call whose relay socket dropped may take to reconnect before its session ends.
    relay_reconnect_seconds: float = Field(default=30, ge=0)
    # `applicationReconnect`: Twilio reopens a dropped relay socket itself (the call goes on)
    # and replays the events it buffered; the gateway ignores replays it already has.
    application_reconnect: bool = True
    # Built-in call tools offered to the model: `endCall`, and `transferToHuman` when set.
    end_call_tool: bool = False
    transfer_to: str | None = Field(default=None, pattern=r"^(\+[1-9][0-9]{4,15}|sip:.+)$")


class TranscriberConfig(_Model):
    """An OpenAI-compatible `/audio/transcriptions` endpoint for voice notes."""

    base_url: str
    model: str = "whisper-1"
    api_key_env: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)


class AgentConfig(_Model):
    answer: Literal["echo", "llm", "webhook", "process"] = "echo"
    # The tenant that owns the agent (docs/tenants.md); None: the operator's own agent.
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-.]{1,64}$")
    # May an agent process (with a key in scope) serve this gateway.toml agent: answer its
    # turns, run its tools, screen its calls? None: yes when it needs a process to work
    # (`answer = "process"`, a tool without `url`, call screening); the process never
    # redefines a gateway.toml agent either way.
    process: bool | None = None
    prompt: str = ""
    greeting: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    dev_routes: dict[str, str] = Field(default_factory=dict)
    echo_delay_ms: float = Field(default=40.0, ge=0)
    # A newer user message cancels the reply being streamed; both are answered together.
    interrupt: bool = False
    # WhatsApp/SMS: send each finished paragraph as soon as it is complete, not the whole reply.
    progressive: bool = False
    # Offer the model the built-in `request_human` tool (pauses the session, alerts operators).
    request_human: bool = False

    @model_validator(mode="before")
    @classmethod
    def _builtin_tools(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        phone = data.get("phone")
        if not isinstance(phone, dict):
            phone = {}
        wanted = []
        if data.get("request_human"):
            wanted.append(REQUEST_HUMAN_TOOL)
        if phone.get("end_call_tool"):
            wanted.append(END_CALL_TOOL)
        if phone.get("transfer_to"):
            wanted.append(TRANSFER_TO_HUMAN_TOOL)
        if wanted:
            tools = list(data.get("tools") or [])
            names = {t.get("name") for t in tools if isinstance(t, dict)}
            tools.extend(t for t in wanted if t["name"] not in names)
            data = {**data, "tools": tools}
        return data

    llm: LlmConfig | None = None
    webhook: WebhookConfig | None = None
    tools: list[ToolConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    whatsapp: list[WhatsAppNumber] = Field(default_factory=list)
    transcriber: TranscriberConfig | None = None
    twilio: list[TwilioNumber] = Field(default_factory=list)
    phone: PhoneConfig = Field(default_factory=PhoneConfig)

    @property
    def process_may_serve(self) -> bool:
        if self.process is not None:
            return self.process
        if self.answer == "process" or self.phone.ringing or any(n.ringing for n in self.twilio):
            return True
        return any(
            t.url is None and not self.builtin_call_tool(t) and t.name != REQUEST_HUMAN for t in self.tools
        )

    def builtin_call_tool(self, tool: ToolConfig) -> bool:
        """Is this the gateway's own endCall/transferToHuman (not a process or URL tool)?"""
        if tool.name not in CALL_TOOLS or tool.url:
            return False
        return self.phone.end_call_tool if tool.name == END_CALL else self.phone.transfer_to is not None

    @model_validator(mode="after")
    def _answer_has_its_table(self) -> AgentConfig:
        if self.answer == "llm" and self.llm is None:
            raise ValueError("answer = 'llm' needs an [agents.<id>.llm] table with at least `model`")
        if self.answer == "webhook" and self.webhook is None:
            raise ValueError("answer = 'webhook' needs an [agents.<id>.webhook] table with `url`")
        return self


class ApiKeyConfig(_Model):
    name: str
    key_env: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Scope (docs/tenants.md): an admin key sees everything; otherwise the key sees the
    # agents of `tenant` (None: the operator's agents without a tenant), maybe narrowed.
    admin: bool = False
    tenant: str | None = None
    agents: list[str] | None = None
    read_only: bool = False


AGENT_KINDS = frozenset({"echo", "process", "llm", "webhook", "tool_url", "transcriber"})


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    # Behind a reverse proxy: rebuild the public URL from X-Forwarded-Proto/Host
    # (Twilio signs the URL it called, not the one the gateway sees).
    trust_proxy: bool = False
    database_url: str = DEFAULT_DATABASE_URL
    bus_url: str = "memory://"
    # With a shared bus (redis://): how often each instance compares the event log's
    # last `seq` with what its feeds have had, so an event the bus lost still arrives.
    bus_catch_up_seconds: float = Field(default=1.0, gt=0)
    admin_key: str | None = None
    auto_migrate: bool = False
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_json: bool = True
    # uvicorn's line per request (method, path, status); tokens in query strings are masked.
    access_log: bool = False
    sse_ping_seconds: float = Field(default=30.0, gt=0)
    sse_buffer_events: int = Field(default=1000, gt=0)
    sse_send_timeout_seconds: float = Field(default=10.0, gt=0)
    chat_buffer_frames: int = Field(default=4096, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    webhook_max_body_bytes: int = Field(default=3_145_728, gt=0)
    max_frame_bytes: int = Field(default=65_536, gt=0)
    token_ttl_seconds: int = Field(default=60, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Token deltas arriving within this window go out as one frame (0: every delta alone).
    token_flush_ms: float = Field(default=10.0, ge=0)
    # Turns running at once (the rest wait): a burst cannot exhaust the loop or the pool.
    max_concurrent_turns: int = Field(default=512, gt=0)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_concurrency: int = Field(default=16, gt=0)
    outbox_retry_base_seconds: float = Field(default=2.0, gt=0)
    outbox_max_attempts: int = Field(default=8, gt=0)
    outbox_uncertain_grace_seconds: float = Field(default=120.0, ge=0)
    limits_sweep_seconds: float = Field(default=10.0, gt=0)
    # Several instances on PostgreSQL: how often a follower tries to become the process
    # that runs the timers and sweepers, and the leader checks that it still is.
    leader_check_seconds: float = Field(default=2.0, gt=0)
    # Several instances (PostgreSQL + a redis:// bus): a session's turns are run by the
    # process holding its lease, renewed every third of this; when a process dies, another
    # runs its pending turns within about 1.5 times this (docs/operations.md).
    turn_lease_seconds: float = Field(default=10.0, ge=1.0, le=20.0)
    # --- security floor (docs/security.md)
    # What an agent process with a non-admin key may register: "echo" and "process" always
    # stay inside the gateway; "llm", "webhook", "tool_url" and "transcriber" make it call URLs.
    key_agent_kinds: list[str] = Field(default_factory=lambda: ["echo", "process"])
    # Environment variables a non-admin key's agent config may name (`api_key_env`, …).
    key_secret_envs: list[str] = Field(default_factory=list)
    # Let agent processes point the gateway at loopback, link-local and private addresses.
    allow_private_urls: bool = False
    # Browser tokens minted through an allowed Origin (no key): per origin, per minute.
    origin_mints_per_minute: int = Field(default=60, gt=0)
    # REST requests per API key per minute (0: unlimited); answered 429 with Retry-After.
    key_requests_per_minute: int = Field(default=600, ge=0)
    # Turns running at once for one tenant (0: unlimited); the rest wait their turn.
    tenant_max_concurrent_turns: int = Field(default=0, ge=0)

    @field_validator("key_agent_kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        unknown = set(value) - AGENT_KINDS
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: {sorted(AGENT_KINDS)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("bus_url")
    @classmethod
    def _known_bus(cls, value: str, info: ValidationInfo) -> str:
        scheme = value.split(":", 1)[0]
        if scheme not in ("memory", "redis", "rediss"):
            raise ValueError("memory:// (one process) or redis://host:port/db (several instances)")
        database = info.data.get("database_url", "")
        if scheme != "memory" and isinstance(database, str) and database.startswith("sqlite"):
            raise ValueError(
                "a redis:// bus is for several gateway processes, and SQLite serves one: "
                "set database_url to PostgreSQL, or bus_url to memory://"
            )
        return value


class Settings(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    source: str = "<embedded default>"

    @field_validator("agents")
    @classmethod
    def _slugs(cls, value: dict[str, AgentConfig]) -> dict[str, AgentConfig]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"agent ids made of letters, digits, '-' and '_' (got {name!r})")
        return value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Settings:
        try:
            return cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            raise ConfigError(describe_validation(source, exc)) from None

    @classmethod
    def embedded_default(cls, **server: Any) -> Settings:
        return cls.from_dict(
            {
                "server": {"auto_migrate": True, **server},
                "agents": {"demo": {"answer": "echo", "allowed_origins": LOCAL_ORIGINS}},
            },
            source="<embedded default>",
        )


def describe_validation(source: str, exc: ValidationError) -> str:
    """One line per problem: the key's dotted path, what was expected, what was given."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        expected = err["msg"]
        if err["type"] == "extra_forbidden":
            expected = "no such key (check the spelling; see docs/configuration.md)"
        got = err.get("input")
        # A rejected value may be a URL with a password in it.
        shown = "" if err["type"] in {"missing", "extra_forbidden"} else redact_url(f" (got {got!r})")
        lines.append(f"  {key}: {expected}{shown}")
    return "\n".join(lines)


_ENV_KEYS: dict[str, tuple[str, type]] = {
    "GATEWAY_DATABASE_URL": ("database_url", str),
    "GATEWAY_BUS_URL": ("bus_url", str),
    "GATEWAY_ADMIN_KEY": ("admin_key", str),
    "GATEWAY_PUBLIC_URL": ("public_url", str),
    "GATEWAY_HOST": ("host", str),
    "GATEWAY_PORT": ("port", int),
    "GATEWAY_LOG_LEVEL": ("log_level", str),
    # Booleans are passed on as text: the model reads true/false/1/0/yes/no/on/off.
    "GATEWAY_LOG_JSON": ("log_json", str),
    "GATEWAY_ACCESS_LOG": ("access_log", str),
}


def config_path(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str], cwd: Path | None = None
) -> tuple[Path | None, str]:
    """Which configuration file to read, and how it was chosen.

    `--config`, else `$GATEWAY_CONFIG`, else `./gateway.toml` when the working
    directory has one, else none (the embedded default).
    """
    if explicit:
        return Path(explicit), "--config"
    if env.get("GATEWAY_CONFIG"):
        return Path(env["GATEWAY_CONFIG"]), "GATEWAY_CONFIG"
    here = (cwd or Path.cwd()) / CONFIG_FILE
    if here.is_file():
        return Path(CONFIG_FILE), "found in the working directory"
    return None, "embedded default"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the config file (if any) and the environment, once.

    `path`, else `$GATEWAY_CONFIG`, else the embedded default. The CLI also looks for
    `./gateway.toml` (`config_path`) and passes what it found; this function never
    depends on the working directory.
    """
    env = os.environ if env is None else env
    path = path or env.get("GATEWAY_CONFIG")
    server_env: dict[str, Any] = {}
    for var, (key, kind) in _ENV_KEYS.items():
        if var in env and env[var] != "":
            try:
                server_env[key] = kind(env[var])
            except ValueError:
                raise ConfigError(f"{var}: expected {kind.__name__} (got {env[var]!r})") from None
    server_env.update({k: v for k, v in overrides.items() if v is not None})
    if not path:
        return Settings.embedded_default(**server_env)
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{file}: server: expected a table")
    data["server"] = {**server, **server_env}
    return Settings.from_dict(data, source=str(file))
