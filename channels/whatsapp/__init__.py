"""WhatsApp Cloud API channel: the pure, independently testable pieces.

    parse      webhook bytes -> typed `WebhookBatch` (payloads); never raises on odd items
    signature  `X-Hub-Signature-256` and verify-token checks (constant time)
    render     Markdown -> WhatsApp formatting; splitting long replies under 4096
    client     `GraphClient` (send, mark read / typing, media) + payload builders
    errors     the typed Graph error tree callers branch on (retry, template, give up)
    transcribe voice-note transcription behind a small Protocol

Routes, the outbox and session logic live elsewhere and call into these modules;
nothing here touches the database or the event bus, and importing does nothing.
"""
