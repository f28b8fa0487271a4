"""Real fake servers (127.0.0.1 HTTP) and small helpers for the test suite."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from gateway.agents.base import ChatMessage, Turn
from gateway.events import ContactRef
from gateway.settings import AgentConfig
from gateway.types import Channel

P = ParamSpec("P")
T = TypeVar("T")


def bounded(seconds: float = 10.0) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Fail an async test that runs longer than `seconds` instead of hanging the suite."""

    def decorate(test: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(test)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            async with asyncio.timeout(seconds):
                return await test(*args, **kwargs)

        return run

    return decorate


def make_turn(agent: dict[str, Any] | AgentConfig, text: str = "hi", **fields: Any) -> Turn:
    """A `Turn` for agent tests: `agent` is an AgentConfig or its dict form."""
    config = agent if isinstance(agent, AgentConfig) else AgentConfig.model_validate(agent)
    values: dict[str, Any] = {
        "turn_id": "msg_reply",
        "session_id": "chat-test",
        "agent_id": "support",
        "agent": config,
        "channel": Channel.CHAT,
        "contact": ContactRef(channel=Channel.CHAT, address="user-1", name="Ada"),
        "messages": (ChatMessage(role="user", content=text, message_id="msg_user"),),
        "history": (),
    }
    values.update(fields)
    return Turn(**values)


def unused_port() -> int:
    """A local port nobody listens on (for "connection refused" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
