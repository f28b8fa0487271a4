"""Agent processes: the hub of connected processes, the `process` agent, process tools.

A process connects over `WS /v1/agents/ws` (gateway/api/agent_socket.py) and
registers agents. The hub maps each agent to its newest connection. A turn of a
process-answered agent is sent as a `turn` frame and its `reply.*` frames come
back through a per-turn queue; a tool declared without `url` is sent as
`tool.call` and resolved by `tool.result`. When a connection drops, everything
waiting on it fails at once with a clear message, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.agents.base import AgentOutput, TextDelta, ToolCall, Turn
from gateway.agents.tools import error_result, parse_arguments
from gateway.errors import AgentError
from gateway.settings import ToolConfig

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReplyItem:
    kind: str  # "start" | "chunk" | "end" | "error" | "gone"
    text: str = ""


class ProcessLink:
    """What the rest of the gateway needs from one connected process."""

    def __init__(self, send: Send, name: str) -> None:
        self.send = send
        self.name = name
        self.open = True
        self._replies: dict[str, asyncio.Queue[ReplyItem]] = {}
        self._tools: dict[str, asyncio.Future[Any]] = {}

    def expect_reply(self, message_id: str) -> asyncio.Queue[ReplyItem]:
        queue: asyncio.Queue[ReplyItem] = asyncio.Queue()
        self._replies[message_id] = queue
        return queue

    def forget_reply(self, message_id: str) -> None:
        self._replies.pop(message_id, None)

    def reply(self, message_id: str, item: ReplyItem) -> bool:
        queue = self._replies.get(message_id)
        if queue is None:
            return False
        queue.put_nowait(item)
        return True

    def expect_tool(self, call_id: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._tools[call_id] = future
        return future

    def forget_tool(self, call_id: str) -> None:
        self._tools.pop(call_id, None)

    def tool_result(self, call_id: str, result: Any) -> bool:
        future = self._tools.pop(call_id, None)
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def close(self) -> None:
        """The socket is gone: fail everything that waits on it."""
        self.open = False
        for queue in self._replies.values():
            queue.put_nowait(ReplyItem("gone"))
        for future in self._tools.values():
            if not future.done():
                future.set_result(error_result("agent process disconnected"))
        self._tools.clear()


class ProcessHub:
    """Which connected process serves which agent (the newest registration wins)."""

    def __init__(self) -> None:
        self._links: dict[str, ProcessLink] = {}
        self._changed = asyncio.Condition()
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, attached: Callable[[str], None]) -> None:
        """Call `attached(agent_id)` whenever a process starts serving an agent here."""
        self._watchers.append(attached)

    async def attach(self, agent_id: str, link: ProcessLink) -> None:
        async with self._changed:
            self._links[agent_id] = link
            self._changed.notify_all()
        for attached in self._watchers:
            attached(agent_id)

    def detach(self, link: ProcessLink) -> list[str]:
        gone = [a for a, existing in self._links.items() if existing is link]
        for agent_id in gone:
            del self._links[agent_id]
        return gone

    def current(self, agent_id: str) -> ProcessLink | None:
        link = self._links.get(agent_id)
        return link if link is not None and link.open else None

    async def wait_for(self, agent_id: str, seconds: float) -> ProcessLink | None:
        """The agent's process, waiting up to `seconds` for one to (re)connect."""
        link = self.current(agent_id)
        if link is not None or seconds <= 0:
            return link
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: self.current(agent_id) is not None)
        return self.current(agent_id)

    def connected(self) -> dict[str, str]:
        return {agent: link.name for agent, link in self._links.items() if link.open}


def history_json(turn: Turn) -> list[dict[str, Any]]:
    return [
        {"role": m.role, "text": m.content, "source": m.source}
        for m in turn.history
        if m.role in ("user", "assistant") and m.content
    ]


async def _send_turn(link: ProcessLink, turn: Turn) -> None:
    frame = {
        "event": "turn",
        "session_id": turn.session_id,
        "message_id": turn.turn_id,
        "in_reply_to": turn.messages[-1].message_id if turn.messages else None,
        "agent_id": turn.agent_id,
        "text": turn.text,
        "history": history_json(turn),
        "channel": str(turn.channel),
        "contact": None if turn.contact is None else {"id": turn.contact.address, "name": turn.contact.name},
        "context": {k: v for k, v in turn.context.items() if not k.startswith("_")},
        "metadata": dict(turn.metadata),
    }
    try:
        await link.send(frame)
    except Exception:  # the socket died between lookup and send: treated as gone
        link.reply(turn.turn_id, ReplyItem("gone"))


class ProcessAgent:
    """`answer = "process"`: the connected process answers the turn itself.

    A process that disconnects before it sent any of the reply (say, it was
    restarting just as the turn began) is waited for again, within the same
    `process_reconnect_seconds` budget; once text has streamed, a disconnect fails
    the turn (half a reply is never stored).
    """

    def __init__(self, hub: ProcessHub) -> None:
        self._hub = hub

    async def run(self, turn: Turn) -> AsyncIterator[AgentOutput]:
        limits = turn.agent.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.process_reconnect_seconds
        while True:
            link = await self._hub.wait_for(turn.agent_id, max(0.0, deadline - loop.time()))
            if link is None:
                raise AgentError(
                    f"no agent process is connected for {turn.agent_id!r} "
                    f"(waited {limits.process_reconnect_seconds:g} s)",
                    code="agent_process_unavailable",
                )
            streamed = False
            async with contextlib.aclosing(self._exchange(link, turn)) as items:
                async for item in items:
                    if item.kind == "chunk":
                        streamed = True
                        yield TextDelta(text=item.text)
                    elif item.kind == "end":
                        if item.text and not streamed:
                            yield TextDelta(text=item.text)
                        return
                    elif item.kind == "error":
                        raise AgentError(
                            f"the agent process failed the turn: {item.text}", code="agent_error"
                        )
                    elif streamed:  # gone, after part of the reply
                        raise AgentError(
                            "the agent process disconnected mid-reply", code="agent_disconnected"
                        )
                    else:
                        break  # gone before replying: wait for a process again

    async def _exchange(self, link: ProcessLink, turn: Turn) -> AsyncGenerator[ReplyItem, None]:
        """Send the turn on one link and yield its reply items until end, error or gone."""
        timeout = turn.agent.limits.process_reply_timeout_seconds
        queue = link.expect_reply(turn.turn_id)
        finished = False
        try:
            await _send_turn(link, turn)
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        item = await queue.get()
                except TimeoutError:
                    raise AgentError(
                        f"the agent process sent no reply for {timeout:g} s", code="agent_timeout"
                    ) from None
                if item.kind == "start":
                    continue
                finished = item.kind != "chunk"
                yield item
                if finished:
                    return
        finally:
            link.forget_reply(turn.turn_id)
            if not finished and link.open:
                # Cancelled (or timed out) before the process finished: tell it to stop.
                with contextlib.suppress(Exception):
                    await link.send(
                        {"event": "turn.cancelled", "session_id": turn.session_id, "message_id": turn.turn_id}
                    )


class ProcessToolRunner:
    """Runs a tool declared without `url` in the agent's connected process."""

    def __init__(self, hub: ProcessHub) -> None:
        self._hub = hub

    async def call(self, turn: Turn, tool: ToolConfig, call: ToolCall) -> Any:
        link = self._hub.current(turn.agent_id)
        if link is None:
            return error_result(f"tool {tool.name} runs in an agent process and none is connected")
        arguments = parse_arguments(call)
        if isinstance(arguments, str):
            return error_result(arguments)
        future = link.expect_tool(call.id)
        try:
            await link.send(
                {
                    "event": "tool.call",
                    "agent_id": turn.agent_id,
                    "session_id": turn.session_id,
                    "tool_call_id": call.id,
                    "name": tool.name,
                    "arguments": arguments,
                }
            )
            async with asyncio.timeout(tool.timeout_seconds):
                return await future
        except TimeoutError:
            return error_result(f"tool {tool.name} timed out after {tool.timeout_seconds:g} s")
        finally:
            link.forget_tool(call.id)
