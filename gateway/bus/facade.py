"""The bus facade: publish events, subscribe to the global feed or one session."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from gateway.bus.base import Backend, Subscription
from gateway.bus.memory import MemoryBackend
from gateway.codec import encode_event
from gateway.errors import ConfigError
from gateway.events import Event

ALL = "events"


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def topics_of(event: Event) -> tuple[str, ...]:
    """Where `Bus.publish` sends an event (a backend refilling from the store sends it there too)."""
    return (ALL, session_topic(event.session_id)) if event.session_id else (ALL,)


class EventLog(Protocol):
    """The store's event log, as a networked backend reads it to fill what the bus lost."""

    async def events_after(self, seq: int, *, limit: int) -> list[Event]: ...

    async def last_seq(self) -> int: ...


def backend_for(url: str, log: EventLog | None = None, *, catch_up_seconds: float = 1.0) -> Backend:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryBackend()
    if scheme in ("redis", "rediss"):
        if log is None:
            raise ConfigError("bus_url: a redis:// bus needs the event log to fill its gaps")
        from gateway.bus.redis import RedisBackend  # the client library only when used

        async def fill(after: int, limit: int) -> list[tuple[int, tuple[str, ...], bytes]]:
            events = await log.events_after(after, limit=limit)
            return [(e.seq or 0, topics_of(e), encode_event(e)) for e in events]

        return RedisBackend(url, fill, log.last_seq, catch_up_seconds=catch_up_seconds)
    raise ConfigError(f"bus_url: no backend for scheme {scheme!r} (expected memory:// or redis://)")


class Bus:
    """Encodes each event once and hands the bytes to every interested topic."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    def from_url(cls, url: str, log: EventLog | None = None, *, catch_up_seconds: float = 1.0) -> Bus:
        return cls(backend_for(url, log, catch_up_seconds=catch_up_seconds))

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
