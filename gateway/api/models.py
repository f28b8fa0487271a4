"""The request bodies and query strings of the REST API, as pydantic models.

These models are the one typed layer: routes parse with them (gateway/api/schema.py)
and /openapi.json is generated from them, so the document cannot drift from what
is accepted. Field names are the wire names. Strings are strict (no coercion from
numbers) and never carry a NUL or a lone surrogate (gateway/sanitizer.py).

`codes` names the error code a bad value of a field gets and `missing` the code of
a required field that is absent (both default to `invalid_field`, or
`invalid_query` for query strings), keeping the codes docs/protocol.md lists.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError

from gateway import sanitizer

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_METADATA_BYTES = 16_384


def _safe(value: str) -> str:
    found = sanitizer.problem(value)
    if found is not None:
        raise PydanticCustomError("unsafe_text", found)
    return value


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise PydanticCustomError("too_large", "is larger than 16 KB")
    user = value.get("userId")
    if user is not None and (
        isinstance(user, bool) or not isinstance(user, str | int) or len(str(user)) > sanitizer.MAX_ID
    ):
        raise PydanticCustomError(
            "invalid_user_id",
            f"`userId` must be a string or integer of at most {sanitizer.MAX_ID} characters",
        )
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > sanitizer.MAX_NAME):
        raise PydanticCustomError(
            "invalid_name", f"`name` must be a string of at most {sanitizer.MAX_NAME} characters"
        )
    return value


Text = Annotated[StrictStr, AfterValidator(_safe)]


# Safe strings by size (type aliases, so that mypy reads them as types).
Str8 = Annotated[Text, Field(min_length=1, max_length=8)]
Str16 = Annotated[Text, Field(min_length=1, max_length=16)]
Str32 = Annotated[Text, Field(min_length=1, max_length=32)]
Str35 = Annotated[Text, Field(min_length=1, max_length=35)]
Str64 = Annotated[Text, Field(min_length=1, max_length=64)]
Str128 = Annotated[Text, Field(min_length=1, max_length=sanitizer.MAX_ID)]
Str140 = Annotated[Text, Field(min_length=1, max_length=140)]
Str256 = Annotated[Text, Field(min_length=1, max_length=256)]
Str512 = Annotated[Text, Field(min_length=1, max_length=512)]
Str4096 = Annotated[Text, Field(min_length=1, max_length=4096)]
Name = Annotated[Text, Field(max_length=sanitizer.MAX_NAME)]
SessionId = Annotated[
    Text, Field(min_length=1, max_length=64, description="a session id (`chat-…`, `api-…`)")
]
AgentId = Annotated[Text, Field(min_length=1, max_length=64, description="an agent id")]
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_metadata),
    Field(
        description="free-form JSON object, at most 16 KB; `userId` (≤ 128 characters) and "
        "`name` (≤ 256) name the contact of a chat token"
    ),
]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    codes: ClassVar[dict[str, str]] = {}
    missing: ClassVar[dict[str, str]] = {}
    refusals: ClassVar[dict[str, str]] = {}  # field -> the message for any bad value of it


# ---------------------------------------------------------------- bodies


class TokenRequest(ApiModel):
    """`POST /v1/tokens`."""

    codes: ClassVar[dict[str, str]] = {"channel": "invalid_channel"}
    missing: ClassVar[dict[str, str]] = {"agent": "missing_agent"}
    refusals: ClassVar[dict[str, str]] = {"channel": '`channel` must be "chat" or "stream"'}

    agent: AgentId
    channel: Literal["chat", "stream"] = "chat"
    metadata: Metadata | None = None
    sessionId: SessionId | None = None


class ContactObject(ApiModel):
    id: Str128
    name: Name | None = None


class MessageRequest(ApiModel):
    """`POST /v1/agents/{agent}/messages`."""

    codes: ClassVar[dict[str, str]] = {"text": "invalid_text", "contact": "invalid_contact"}
    missing: ClassVar[dict[str, str]] = {"text": "invalid_text"}
    refusals: ClassVar[dict[str, str]] = {"contact": "`contact` must be an id string or {id, name?}"}

    text: Text = Field(description="the user's message (the agent's `limits.max_text_chars`)")
    sessionId: SessionId | None = None
    contact: Str128 | ContactObject | None = Field(default=None, union_mode="left_to_right")
    metadata: Metadata | None = None


class HumanMessageRequest(ApiModel):
    """`POST /v1/sessions/{session_id}/messages`."""

    codes: ClassVar[dict[str, str]] = {"text": "invalid_text"}
    missing: ClassVar[dict[str, str]] = {"text": "invalid_text"}

    text: Text
    author: Str128 | None = None


class AgentPauseRequest(ApiModel):
    """`POST /v1/agents/{agent}/pause|resume` (the body is optional)."""

    contact: Str128 | None = None


class CallControlRequest(ApiModel):
    """`POST /v1/calls/{session_id}/{action}` (the body is optional): each action reads its fields
    (`forward` `to`, `digits` `digits`, `language` `language`, `hangup` `reason`, `configure` the
    call settings); the call channel checks their values and refuses settings it does not know."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)
    codes: ClassVar[dict[str, str]] = {
        "to": "invalid_to",
        "digits": "invalid_digits",
        "language": "invalid_language",
        **{k: "invalid_settings" for k in ("voice", "ttsProvider", "transcriptionProvider", "speechModel")},
        **{k: "invalid_settings" for k in ("interruptible", "preemptible", "dtmfDetection", "hints")},
    }

    to: Str256 | None = None
    digits: Str64 | None = None
    language: Str35 | None = None
    reason: Str32 | None = None
    voice: Str128 | None = None
    ttsProvider: Str128 | None = None
    transcriptionProvider: Str128 | None = None
    speechModel: Str128 | None = None
    interruptible: StrictBool | Literal["any", "speech", "dtmf", "none"] | None = None
    preemptible: StrictBool | None = None
    dtmfDetection: StrictBool | None = None
    hints: Annotated[list[Str128], Field(max_length=500)] | Str4096 | None = Field(
        default=None, description="words or phrases: a list, or one comma-separated string"
    )

    def arguments(self) -> dict[str, Any]:
        """The fields given (unknown ones too: the call channel names them in its refusal)."""
        return self.model_dump(exclude_none=True)


class LanguageObject(ApiModel):
    code: Str35


class TemplateRequest(ApiModel):
    """`POST /v1/sessions/{session_id}/template`: a Cloud API template or a Twilio Content template."""

    codes: ClassVar[dict[str, str]] = {
        "name": "invalid_template",
        "language": "invalid_template",
        "components": "invalid_template",
        "contentSid": "invalid_template",
        "contentVariables": "invalid_template",
    }

    name: Str512 | None = Field(default=None, description="WhatsApp Cloud API: the template's name")
    language: Str35 | LanguageObject | None = Field(
        default=None, union_mode="left_to_right", description="WhatsApp: a code like en_US"
    )
    components: list[Any] | None = Field(default=None, description="WhatsApp: the template's components")
    contentSid: Str64 | None = Field(default=None, description="Twilio: a Content template sid (HX…)")
    contentVariables: dict[str, Any] | None = Field(default=None, description="Twilio: the variables")

    def spec(self) -> dict[str, Any]:
        """The template as the channels read it."""
        return self.model_dump(mode="json", exclude_none=True)


class WhatsAppStartRequest(ApiModel):
    """`POST /v1/agents/{agent}/whatsapp/messages`."""

    codes: ClassVar[dict[str, str]] = {"template": "template_required"}
    missing: ClassVar[dict[str, str]] = {"to": "missing_to", "template": "template_required"}
    refusals: ClassVar[dict[str, str]] = {
        "template": "a conversation is started with a `template` {name, language, components?}"
    }

    to: Str140 = Field(description="the contact's WhatsApp number or user id")
    template: TemplateRequest
    phoneNumberId: Str32 | None = None
    metadata: Metadata | None = None


class TwilioStartRequest(ApiModel):
    """`POST /v1/agents/{agent}/twilio/messages`."""

    codes: ClassVar[dict[str, str]] = {
        "to": "invalid_to",
        "text": "invalid_text",
        "contentSid": "invalid_template",
        "contentVariables": "invalid_template",
        "metadata": "invalid_metadata",
    }
    missing: ClassVar[dict[str, str]] = {"to": "invalid_to"}

    to: Str64 = Field(description="E.164 (`+14155550123`) or `whatsapp:+14155550123`")
    from_: Str64 | None = Field(default=None, alias="from")
    text: Text | None = None
    contentSid: Str64 | None = None
    contentVariables: dict[str, Any] | None = None
    metadata: Metadata | None = None


class CallRequest(ApiModel):
    """`POST /v1/calls`."""

    codes: ClassVar[dict[str, str]] = {
        "to": "invalid_to",
        "language": "invalid_language",
        "metadata": "invalid_metadata",
    }
    missing: ClassVar[dict[str, str]] = {"agent": "missing_agent", "to": "invalid_to"}

    agent: AgentId
    to: Str32 = Field(description="E.164, like +14155550123")
    from_: Str32 | None = Field(default=None, alias="from")
    greeting: Str4096 | None = None
    language: Str35 | None = None
    metadata: Metadata | None = None


class KeyRequest(ApiModel):
    """`POST /v1/keys` (admin keys only)."""

    codes: ClassVar[dict[str, str]] = {
        "tenant": "invalid_tenant",
        "agents": "invalid_agents",
    }
    missing: ClassVar[dict[str, str]] = {"name": "missing_name"}

    name: Str128
    tenant: Str64 | None = Field(default=None, description="letters, digits, '-', '_' and '.'")
    agents: Annotated[list[Str64], Field(max_length=1000)] | None = None
    readOnly: StrictBool = False
    admin: StrictBool = False


# ---------------------------------------------------------------- query strings


class SessionListQuery(ApiModel):
    """`GET /v1/sessions`."""

    codes: ClassVar[dict[str, str]] = {"cursor": "invalid_cursor"}

    agent: Str64 | None = None
    contact: Str128 | None = Field(default=None, description="an address or a `ct_…` id")
    channel: Str16 | None = Field(default=None, description="chat, api, whatsapp, sms or phone")
    status: Literal["active", "ended"] | None = None
    paused: Str64 | None = Field(default=None, description="true/1/yes for paused sessions")
    since: Int64 | None = Field(default=None, description="epoch ms on startedAt, inclusive")
    until: Int64 | None = Field(default=None, description="epoch ms on startedAt, exclusive")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Str256 | None = Field(default=None, description="the nextCursor of the previous page")


class FeedQuery(ApiModel):
    """`GET /v1/events` and `GET /v1/agents/{agent}/events`."""

    codes: ClassVar[dict[str, str]] = {"lastEventId": "invalid_last_event_id", "token": "invalid_token"}

    agents: Str4096 | None = Field(default=None, description="comma-separated agent ids")
    session: Str64 | None = None
    types: Str4096 | None = Field(default=None, description="comma-separated event types")
    tokens: Str8 | None = Field(default=None, description="true to include bot.token")
    token: Str256 | None = Field(default=None, description="a single-use `stream` token")
    lastEventId: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = Field(
        default=None, description="resume after this seq (or the Last-Event-ID header)"
    )


class HandshakeQuery(ApiModel):
    """`GET /whatsapp/webhook` (Meta's subscription handshake)."""

    mode: Str32 | None = Field(default=None, alias="hub.mode")
    verify_token: Str256 | None = Field(default=None, alias="hub.verify_token")
    challenge: Str256 | None = Field(default=None, alias="hub.challenge")


class PricingQuery(ApiModel):
    """`GET /v1/agents/{agent}/pricing`."""

    since: Int64 | None = Field(default=None, description="epoch ms, inclusive")
    until: Int64 | None = Field(default=None, description="epoch ms, exclusive")


class KeyListQuery(ApiModel):
    """`GET /v1/keys`."""

    tenant: Str64 | None = None
