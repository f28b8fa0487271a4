"""The OpenAPI document for the REST surface (WebSocket and SSE frames: docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from gateway import __version__

_ERR = {"$ref": "#/components/responses/Error"}
_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]


def _op(
    summary: str,
    *,
    secured: bool = True,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    ok: str = "200",
    errors: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": "OK"}}}
    for code in errors:
        op["responses"][code] = _ERR
    if secured:
        op["security"] = _KEY
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    token_body = {
        "type": "object",
        "required": ["agent"],
        "properties": {
            "channel": {"enum": ["chat", "stream"]},
            "agent": {"type": "string"},
            "metadata": {"type": "object"},
            "sessionId": {"type": "string"},
        },
    }
    message_body = {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "maxLength": 4096},
            "sessionId": {"type": "string"},
            "contact": {"oneOf": [{"type": "string"}, {"type": "object"}]},
            "metadata": {"type": "object"},
        },
    }
    feed_params = [
        _q("agents"),
        _q("session"),
        _q("types"),
        _q("tokens", "boolean"),
        _q("token"),
        _q("lastEventId", "integer"),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard gateway",
            "version": __version__,
            "description": "Frames of the WebSocket and SSE surfaces are described in docs/protocol.md.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "Error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "properties": {
                                            "code": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
        "paths": {
            "/v1/tokens": {
                "post": _op(
                    "Mint a single-use browser token (API key, or an allowed Origin)",
                    secured=False,
                    body=token_body,
                    ok="201",
                    errors=("400", "401", "403", "404", "413"),
                )
            },
            "/v1/events": {
                "get": _op(
                    "Event feed (SSE) of every visible agent",
                    params=feed_params,
                    errors=("400", "401", "403", "404"),
                )
            },
            "/v1/agents/{agent}/events": {
                "get": _op(
                    "Event feed (SSE) of one agent",
                    params=[_p("agent"), *feed_params],
                    errors=("400", "401", "403", "404"),
                )
            },
            "/v1/agents/{agent}/messages": {
                "post": _op(
                    "Send a user message; the reply streams as SSE (Accept: text/event-stream) "
                    "or returns as JSON",
                    body=message_body,
                    params=[_p("agent")],
                    errors=("400", "401", "403", "404", "409", "413", "502"),
                )
            },
            "/v1/sessions": {
                "get": _op(
                    "List sessions (keyset pagination)",
                    params=[
                        _q("agent"),
                        _q("contact"),
                        _q("channel"),
                        _q("status"),
                        _q("paused", "boolean"),
                        _q("since", "integer"),
                        _q("until", "integer"),
                        _q("limit", "integer"),
                        _q("cursor"),
                    ],
                    errors=("400", "401"),
                )
            },
            "/v1/sessions/{session_id}": {
                "get": _op(
                    "A session with its transcript and messages",
                    params=[_p("session_id")],
                    errors=("401", "404"),
                ),
                "delete": _op(
                    "Erase a session's content, leaving a tombstone",
                    params=[_p("session_id")],
                    errors=("401", "404"),
                ),
            },
            "/v1/sessions/{session_id}/pricing": {
                "get": _op(
                    "What the session's sent WhatsApp messages cost: counts by pricing category and type",
                    params=[_p("session_id")],
                    errors=("401", "404"),
                )
            },
            "/v1/agents/{agent}/pricing": {
                "get": _op(
                    "What the agent's sent WhatsApp messages cost: counts by pricing category and type",
                    params=[_p("agent"), _q("since", "integer"), _q("until", "integer")],
                    errors=("400", "401", "403", "404"),
                )
            },
            "/v1/sessions/{session_id}/pause": {
                "post": _op(
                    "Take over: pause the AI on this session",
                    params=[_p("session_id")],
                    errors=("401", "404", "409"),
                )
            },
            "/v1/sessions/{session_id}/resume": {
                "post": _op("Hand back to the AI", params=[_p("session_id")], errors=("401", "404", "409"))
            },
            "/v1/sessions/{session_id}/messages": {
                "post": _op(
                    "Send a message as a human on the session's channel",
                    ok="201",
                    params=[_p("session_id")],
                    body={
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string"}, "author": {"type": "string"}},
                    },
                    errors=("400", "401", "404", "409", "415"),
                )
            },
            "/v1/agents/{agent}/pause": {
                "post": _op(
                    "Pause an agent, or one contact with it (`contact`)",
                    params=[_p("agent")],
                    errors=("400", "401", "403", "404"),
                )
            },
            "/v1/agents/{agent}/resume": {
                "post": _op(
                    "Resume an agent (every level) or one contact",
                    params=[_p("agent")],
                    errors=("400", "401", "403", "404"),
                )
            },
            "/v1/contacts/{contact}/sessions": {
                "get": _op("A contact's sessions", params=[_p("contact")], errors=("401",))
            },
            "/v1/sessions/{session_id}/template": {
                "post": _op(
                    "Send an approved WhatsApp template (inside or outside the 24-hour window)",
                    ok="202",
                    params=[_p("session_id")],
                    errors=("400", "401", "404", "409", "415"),
                )
            },
            "/v1/agents/{agent}/whatsapp/messages": {
                "post": _op(
                    "Start a WhatsApp conversation with a template",
                    ok="202",
                    params=[_p("agent")],
                    errors=("400", "401", "403", "404", "415"),
                )
            },
            "/whatsapp/webhook": {
                "get": _op("Meta subscription handshake (hub.verify_token)", secured=False, errors=("403",)),
                "post": _op(
                    "WhatsApp Cloud API webhook (X-Hub-Signature-256)",
                    secured=False,
                    errors=("400", "401", "413"),
                ),
            },
            "/twilio/messaging": {
                "post": _op(
                    "Twilio inbound SMS/MMS/WhatsApp webhook (X-Twilio-Signature); answers empty TwiML",
                    secured=False,
                    errors=("400", "401", "413", "415"),
                )
            },
            "/twilio/messaging/status": {
                "post": _op(
                    "Twilio message status callback (X-Twilio-Signature)",
                    secured=False,
                    errors=("400", "401", "415"),
                )
            },
            "/twilio/voice": {
                "post": _op(
                    "Twilio incoming call: answers <Connect><ConversationRelay> TwiML (or <Reject/>)",
                    secured=False,
                    errors=("400", "401", "415"),
                )
            },
            "/twilio/voice/action": {
                "post": _op(
                    "<Connect action> callback: <Dial> after a forward, <Hangup/>, or a relay reconnect",
                    secured=False,
                    errors=("401", "415"),
                )
            },
            "/twilio/voice/status": {
                "post": _op(
                    "Twilio call status callback: final statuses end the call's session",
                    secured=False,
                    ok="204",
                    errors=("400", "401", "415"),
                )
            },
            "/v1/agents/{agent}/twilio/messages": {
                "post": _op(
                    "Start an SMS conversation (text) or a WhatsApp one (a Content template) via Twilio",
                    ok="202",
                    params=[_p("agent")],
                    errors=("400", "401", "403", "404", "409", "415"),
                )
            },
            "/v1/calls": {
                "post": _op(
                    "Place an outbound phone call through Twilio",
                    ok="201",
                    body={
                        "type": "object",
                        "required": ["agent", "to"],
                        "properties": {
                            "agent": {"type": "string"},
                            "to": {"type": "string", "pattern": "^\\+[1-9][0-9]{4,15}$"},
                            "from": {"type": "string"},
                            "greeting": {"type": "string"},
                            "language": {"type": "string"},
                            "metadata": {"type": "object"},
                        },
                    },
                    errors=("400", "401", "403", "404", "409", "415", "429", "502"),
                )
            },
            "/v1/calls/{session_id}/{action}": {
                "post": _op(
                    "Steer a live call: hangup, forward {to}, digits {digits}, language {language}",
                    params=[_p("session_id"), _p("action")],
                    errors=("400", "401", "404", "409", "415"),
                )
            },
            "/v1/keys": {
                "post": _op(
                    "Create an API key (admin keys only); the key is in this answer only",
                    body={
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "tenant": {"type": "string"},
                            "agents": {"type": "array", "items": {"type": "string"}},
                            "readOnly": {"type": "boolean"},
                            "admin": {"type": "boolean"},
                        },
                    },
                    ok="201",
                    errors=("400", "401", "403", "404", "429"),
                ),
                "get": _op("List API keys (admin keys only)", params=[_q("tenant")], errors=("401", "404")),
            },
            "/v1/keys/{key_id}": {
                "delete": _op(
                    "Revoke an API key (admin keys only)", params=[_p("key_id")], errors=("401", "404")
                )
            },
            "/healthz": {"get": _op("Liveness", secured=False)},
            "/readyz": {"get": _op("Readiness: database and bus reachable", secured=False, errors=("503",))},
            "/metrics": {"get": _op("Prometheus metrics", secured=False)},
        },
    }
