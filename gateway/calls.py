"""The seam through which agents, tools and the API steer live phone calls.

The Twilio voice channel implements it; the agent socket (`call.*` commands), the
built-in `endCall` / `transferToHuman` tools and `POST /v1/calls/{id}/…` call it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

CALL_ACTIONS = frozenset({"hangup", "forward", "digits", "language", "configure"})


class CallControl(Protocol):
    async def control(
        self, session_id: str, action: str, args: Mapping[str, Any], *, after_reply: bool = False
    ) -> dict[str, Any]:
        """Run `action` on the live call of `session_id`; `after_reply` waits until the reply
        being spoken has been said (for tools called in the middle of a turn)."""
        ...

    async def decide(self, call_id: str, accept: bool, reason: str | None, agents: Collection[str]) -> bool:
        """Answer a `call.ringing` of one of `agents` (ringing here or, with several
        instances, on the one its webhook reached): True if the call was still waiting."""
        ...
