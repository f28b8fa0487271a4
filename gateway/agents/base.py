"""The agent seam: `Agent.run(turn)` yields what the agent says, as it says it.

Every way of answering (echo, an OpenAI-compatible LLM, an HTTP webhook, a connected
agent process) implements this one method. The turn runner consumes the iterator,
streams `TextDelta`s to the session's channel, records tool activity, and stores
the joined text as the reply once the iterator ends. Closing the iterator early
(`aclose()`) is how a turn is cancelled; implementations must release upstream
connections promptly when that happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.events import ContactRef
from gateway.settings import AgentConfig
from gateway.types import Channel


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the raw JSON string, as OpenAI-compatible APIs carry it


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage:
    """One history entry, in the shape OpenAI-compatible chat APIs use."""

    role: str  # user | assistant | tool | system
    content: str = ""
    source: str = "agent"  # for assistant messages: agent | human
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Turn:
    turn_id: str  # the id the reply message will have
    session_id: str
    agent_id: str
    agent: AgentConfig
    channel: Channel
    contact: ContactRef | None
    messages: tuple[ChatMessage, ...]  # the user messages this turn answers (one or more)
    history: tuple[ChatMessage, ...]  # everything before them, oldest first
    context: Mapping[str, Any] = field(default_factory=dict)  # UI / run-time context
    prompt: str = ""  # the session's prompt template (override or the agent's)
    prompt_vars: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The user's words for this turn: several queued messages joined by newlines."""
        return "\n".join(m.content for m in self.messages)


@dataclass(frozen=True, kw_only=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallsRequested:
    """The model asked for these tools (emitted as `llm.toolCall`)."""

    calls: tuple[ToolCall, ...]
    text: str = ""  # any assistant text that came with the calls
    ephemeral: bool = False  # every call in the batch is to an ephemeral tool


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolResultReady:
    """A tool finished (emitted as `llm.toolResult` unless ephemeral)."""

    call_id: str
    name: str
    result: Any
    ephemeral: bool = False


AgentOutput = TextDelta | ToolCallsRequested | ToolResultReady


class Agent(Protocol):
    def run(self, turn: Turn) -> AsyncIterator[AgentOutput]: ...
