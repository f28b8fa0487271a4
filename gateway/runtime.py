"""The services one running gateway is made of, built by the composition root."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.access import Access
from gateway.agents.factory import AgentFactory
from gateway.auth import Auth
from gateway.bus.facade import Bus
from gateway.calls import CallControl
from gateway.conversations import ConversationService
from gateway.delivery import Delivery
from gateway.directory import AgentDirectory
from gateway.limits import SessionLimits
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings
from gateway.store.sql import Store


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    bus: Bus
    directory: AgentDirectory
    auth: Auth
    access: Access
    service: ConversationService
    metrics: Metrics
    agents: AgentFactory
    deliveries: dict[str, Delivery]
    outbox: Outbox
    limits: SessionLimits
    # Browser tokens minted through an allowed Origin, per origin (docs/security.md).
    origin_mints: RateLimiter
    # Live phone calls (the Twilio voice channel), once the app is composed.
    calls: CallControl | None = None
    # Set when the server begins to shut down: long-lived connections close cleanly.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
