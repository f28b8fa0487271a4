"""Several instances: a turn of an agent served by a process runs where the process is.

An agent process (`answer = "process"`) keeps one WebSocket to one instance. Its turns
and tool calls can only be exchanged over that socket, so an instance without the
process does not run such a turn: before it claims the session's turn lease
(gateway/turn_lease.py) it asks, on the bus topic `turns:wanted`, for the instance that
has the process to run it, and that instance submits the session to its own runner.
Every instance's agent sockets already receive every instance's events (the bus), so
the process also sees the events of sessions whose messages came in elsewhere.

If no instance has the process (it is reconnecting, or gone), nobody answers the call.
The look for orphaned turns asks again every half lease, and a process that connects
(or reconnects, to any instance) has its agent's pending sessions submitted there. If
none comes within a lease plus the agent's `process_reconnect_seconds`, the turn runs
where it is and fails as in one process (`agent_process_unavailable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.agents.remote import ProcessHub
from gateway.bus.facade import Bus
from gateway.directory import AgentDirectory
from gateway.events import now_ms
from gateway.store.sql import Store

log = logging.getLogger("gateway.placement")

WANTED = "turns:wanted"
# An envelope header without a `seq` (gateway/codec.py: type, seq, agent, session): the
# Redis bus passes it through as it comes, like a token delta.
_KIND = b"turn.wanted"


def wanted_payload(agent_id: str, session_id: str) -> bytes:
    return b"\t".join((_KIND, b"", agent_id.encode(), session_id.encode())) + b"\n"


def parse_wanted(payload: bytes) -> tuple[str, str] | None:
    fields = payload.rstrip(b"\n").split(b"\t")
    if len(fields) != 4 or fields[0] != _KIND:
        return None
    return fields[2].decode(), fields[3].decode()


class Placement:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        directory: AgentDirectory,
        hub: ProcessHub,
        *,
        patience_ms: int,
        submit: Callable[[str], None],
    ) -> None:
        self._store = store
        self._bus = bus
        self._directory = directory
        self._hub = hub
        self._patience_ms = patience_ms  # a lease
        self._submit = submit
        self._background: set[asyncio.Task[None]] = set()
        hub.watch(self._attached)

    def _attached(self, agent_id: str) -> None:
        task = asyncio.create_task(self._take_pending(agent_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _take_pending(self, agent_id: str) -> None:
        """A process (re)connected here: run its agent's turns that wait (for it) here."""
        try:
            for session_id in await self._store.pending_sessions(agent_id=agent_id):
                self._submit(session_id)
        except Exception as exc:  # the look for orphaned turns asks again
            log.warning("could not look for the pending turns of %r: %r", agent_id, exc)

    async def here(self, session_id: str) -> bool:
        """Run this session's turns here? If not, the instance with its process is asked."""
        if not self._any_process_agent():
            # The usual deployment: no agent is served by a process, every turn runs where
            # it is; its session need not be read (another instance's write empties the
            # hot state, so that read went to the database for most turns).
            return True
        state = await self._store.turn_state(session_id)
        if state is None:
            return True
        session, messages = state
        config = self._directory.find(session.agent_id)
        if config is None or config.answer != "process" or self._hub.current(session.agent_id) is not None:
            return True
        waiting = [m.created_at for m in messages if m.pending and m.role == "user"]
        patience = self._patience_ms + int(config.limits.process_reconnect_seconds * 1000)
        if waiting and now_ms() - min(waiting) > patience:
            return True  # no process came: run it here, where it fails as in one process
        self._bus.backend.publish(WANTED, wanted_payload(session.agent_id, session_id))
        return False

    def _any_process_agent(self) -> bool:
        for agent_id in self._directory.ids():
            config = self._directory.find(agent_id)
            if config is not None and config.answer == "process":
                return True
        return False

    async def serve(self) -> None:
        """Run the turns other instances ask for, of the agents whose process is here."""
        async with self._bus.backend.subscribe(WANTED, maxsize=10_000) as wanted:
            async for payload in wanted:
                found = parse_wanted(payload)
                if found is not None and self._hub.current(found[0]) is not None:
                    self._submit(found[1])
