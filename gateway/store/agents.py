"""Agent rows: what gateway.toml and agent processes defined, and the agent-level pause."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.events import now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    AgentRow,
)


class AgentsRepo(StoreCore):
    async def sync_agents(self, configs: dict[str, dict[str, Any]], origin: str = "config") -> None:
        now = now_ms()

        async def job(s: AsyncSession) -> None:
            existing = {r.id: r for r in (await s.scalars(select(AgentRow))).all()}
            for agent_id, config in configs.items():
                row = existing.get(agent_id)
                tenant = config.get("tenant")
                if row is None:
                    s.add(
                        AgentRow(
                            id=agent_id,
                            origin=origin,
                            tenant=tenant,
                            config=config,
                            paused=False,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                elif row.config != config or row.origin != origin or row.tenant != tenant:
                    row.config, row.origin, row.tenant, row.updated_at = config, origin, tenant, now

        return await self._writer.run(job)

    async def agent_rows(self) -> dict[str, tuple[str, dict[str, Any], bool]]:
        async with self._read() as s:
            rows = (await s.scalars(select(AgentRow))).all()
        return {r.id: (r.origin, r.config, r.paused) for r in rows}
