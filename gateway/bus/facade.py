"""The bus facade: publish events, subscribe to the global feed or one session."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from gateway.bus.base import Backend, Subscription
from gateway.bus.memory import MemoryBackend
from gateway.codec import encode_event
from gateway.errors import ConfigError
from gateway.events import Event

ALL = "events"


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def backend_for(url: str) -> Backend:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryBackend()
    raise ConfigError(f"bus_url: no backend for scheme {scheme!r} (expected memory://)")


class Bus:
    """Encodes each event once and hands the bytes to every interested topic."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    def from_url(cls, url: str) -> Bus:
        return cls(backend_for(url))

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    async def ping(self) -> None:
        await self.backend.ping()

    def publish(self, event: Event) -> None:
        """Synchronous so that the store can hand events over in commit order."""
        payload = encode_event(event)
        self.backend.publish(ALL, payload)
        if event.session_id:
            self.backend.publish(session_topic(event.session_id), payload)

    def publish_to_session(self, event: Event) -> None:
        """Only the session's own readers (a chat socket, a waiting HTTP reply) get this."""
        if event.session_id:
            self.backend.publish(session_topic(event.session_id), encode_event(event))

    def publish_all(self, events: list[Event]) -> None:
        for event in events:
            self.publish(event)

    def subscribe_all(self, maxsize: int) -> AbstractAsyncContextManager[Subscription]:
        return self.backend.subscribe(ALL, maxsize)

    def subscribe_session(self, session_id: str, maxsize: int) -> AbstractAsyncContextManager[Subscription]:
        return self.backend.subscribe(session_topic(session_id), maxsize)
