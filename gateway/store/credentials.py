"""API keys (stored hashed) and single-use browser tokens."""

from __future__ import annotations

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import ids
from gateway.events import now_ms
from gateway.store.core import StoreCore
from gateway.store.models import (
    ApiKeyRow,
    BrowserTokenRow,
)
from gateway.store.records import (
    ApiKeyRecord,
    TokenRecord,
)
from gateway.store.rows import (
    _key,
)


class CredentialsRepo(StoreCore):
    async def add_api_key(
        self,
        *,
        name: str,
        prefix: str,
        sha256: str,
        tenant: str | None,
        agents: list[str] | None = None,
        read_only: bool = False,
        admin: bool = False,
    ) -> ApiKeyRecord:
        key_id, created = ids.key_id(), now_ms()

        async def job(s: AsyncSession) -> ApiKeyRecord:
            row = ApiKeyRow(
                id=key_id,
                name=name,
                prefix=prefix,
                sha256=sha256,
                tenant=tenant,
                agents=agents,
                read_only=read_only,
                admin=admin,
                created_at=created,
                revoked_at=None,
                last_used_at=None,
            )
            s.add(row)
            await s.flush()
            return _key(row)

        return await self._writer.run(job)

    async def api_key_by_hash(self, sha256: str) -> ApiKeyRecord | None:
        async with self._read() as s:
            row = await s.scalar(select(ApiKeyRow).where(ApiKeyRow.sha256 == sha256))
        return None if row is None else _key(row)

    async def api_keys(self) -> list[ApiKeyRecord]:
        async with self._read() as s:
            return [_key(r) for r in (await s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))]

    async def touch_api_key(self, key_id: str, at: int) -> None:
        """Record a key's last use (callers throttle this to about once a minute)."""

        async def job(s: AsyncSession) -> None:
            await s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=at))

        return await self._writer.run(job)

    async def revoke_api_key(self, key: str) -> bool:
        async def job(s: AsyncSession) -> bool:
            res = await s.execute(
                update(ApiKeyRow)
                .where(or_(ApiKeyRow.id == key, ApiKeyRow.prefix == key), ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=now_ms())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

        return await self._writer.run(job)

    async def add_token(self, sha256: str, token: TokenRecord) -> None:
        async def job(s: AsyncSession) -> None:
            s.add(
                BrowserTokenRow(
                    sha256=sha256,
                    agent_id=token.agent_id,
                    channel=token.channel,
                    session_id=token.session_id,
                    meta=token.meta,
                    expires_at=token.expires_at,
                    used_at=None,
                )
            )
            # Housekeeping on the write path keeps the table small without a timer.
            await s.execute(delete(BrowserTokenRow).where(BrowserTokenRow.expires_at < now_ms() - 3_600_000))

        return await self._writer.run(job)

    async def consume_token(self, sha256: str) -> TokenRecord | None:
        """Mark a token used, atomically: a second use (from any process) gets None."""
        now = now_ms()

        async def job(s: AsyncSession) -> TokenRecord | None:
            res = await s.execute(
                update(BrowserTokenRow)
                .where(
                    BrowserTokenRow.sha256 == sha256,
                    BrowserTokenRow.used_at.is_(None),
                    BrowserTokenRow.expires_at > now,
                )
                .values(used_at=now)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return None
            row = await s.get_one(BrowserTokenRow, sha256)
            return TokenRecord(
                agent_id=row.agent_id,
                channel=row.channel,
                session_id=row.session_id,
                meta=row.meta,
                expires_at=row.expires_at,
            )

        return await self._writer.run(job)
