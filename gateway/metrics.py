"""Prometheus metrics, on a registry owned by one app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.websockets = Gauge("gateway_websockets_active", "Open WebSockets", ["kind"], registry=r)
        self.sse_clients = Gauge("gateway_sse_clients_active", "Open SSE event feeds", registry=r)
        self.turns = Counter("gateway_turns", "Agent turns finished", ["agent", "outcome"], registry=r)
        self.turn_seconds = Histogram(
            "gateway_turn_seconds",
            "Turn duration, user message to done",
            ["agent"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "gateway_turn_first_token_seconds",
            "Turn time to first token",
            ["agent"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("gateway_tokens_streamed", "Token deltas streamed", ["agent"], registry=r)
        self.events = Counter("gateway_events", "Events persisted", ["type"], registry=r)
        self.webhook_errors = Counter(
            "gateway_webhook_errors",
            "Errors a provider reported in a webhook (account- or message-level)",
            ["provider", "level", "code"],
            registry=r,
        )
        self.whatsapp_priced = Counter(
            "gateway_whatsapp_priced_messages",
            "Sent WhatsApp messages by Meta's pricing category and type (from their statuses)",
            ["agent", "category", "type"],
            registry=r,
        )
        self.sse_dropped = Counter(
            "gateway_sse_clients_dropped", "SSE clients cut loose for falling behind", registry=r
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
