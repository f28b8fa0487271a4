"""The built-in `echo` agent: streams the user's words back one token at a time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from gateway.agents.base import AgentOutput, TextDelta, Turn

_TOKEN = re.compile(r"\S+\s*|\s+")


class EchoAgent:
    """Answers with the turn's text, word by word, `delay` seconds apart."""

    def __init__(self, delay_seconds: float | None = None) -> None:
        self._delay = delay_seconds

    async def run(self, turn: Turn) -> AsyncIterator[AgentOutput]:
        delay = self._delay if self._delay is not None else turn.agent.echo_delay_ms / 1000
        for i, token in enumerate(_TOKEN.findall(turn.text)):
            if delay or i % 16 == 15:  # at zero delay, still let the loop breathe now and then
                await asyncio.sleep(delay)
            yield TextDelta(text=token)
