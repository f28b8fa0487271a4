"""Token coalescing: the first delta goes out at once; bursts share a frame."""

from __future__ import annotations

import asyncio

from gateway.bus.facade import Bus
from gateway.bus.memory import MemoryBackend
from gateway.codec import decode_envelope
from gateway.conversations import TokenStream
from gateway.events import Event
from gateway.types import EventType


async def test_leading_delta_is_immediate_and_bursts_coalesce() -> None:
    bus = Bus(MemoryBackend())
    base = Event(type=EventType.BOT_TOKEN, agent="a", session_id="chat-1", data={"messageId": "m"})
    async with bus.subscribe_session("chat-1", 100) as sub:
        stream = TokenStream(bus, base, 0.05)
        stream.add("A")
        assert decode_envelope(sub.get_nowait() or b"").json()["text"] == "A"  # no delay for the first
        stream.add("B")
        stream.add("C")
        assert sub.get_nowait() is None  # inside the window: held
        await asyncio.sleep(0.08)
        assert decode_envelope(sub.get_nowait() or b"").json()["text"] == "BC"
        stream.add("D")
        stream.flush()
        assert decode_envelope(sub.get_nowait() or b"").json()["text"] == "D"
        assert stream.count == 4
