"""Which gateway process runs a session's turns: a lease row per session (several instances).

With several processes on one PostgreSQL database, messages for one session may arrive
at different instances at the same moment. Each instance's turn runner (gateway/turns.py)
is serial per session only within itself, so before it runs a session's turns it claims
the session's row in `turn_leases` with one statement:

- no row, or an expired one: the row is ours until `expires_at` (now + `ttl`); we run.
- a live row of another process: the statement sets its `dirty` flag instead, and we
  run nothing. Our message is committed, so the owner's next turn picks it up.

The owner runs its turns, then lets go with `DELETE … WHERE NOT dirty`. If another
process marked the row meanwhile, nothing is deleted: the owner clears the flag, drops
its hot state for the session (another process wrote, gateway/store/hot.py) and runs one
more turn, which reads the message from the database. Both statements lock the row, so
a message is either seen by the owner's `dirty` check or its sender finds no row and
claims it itself: it can never fall between the two. This is the cross-process version
of the runner's own "dirty" set, and messages arriving together are answered together.

Why a lease row, not a session-level advisory lock or routing: an advisory lock is tied
to a connection, so holding one per running turn (hundreds at once in a burst) would pin
hundreds of pooled connections; routing by session needs the load balancer to know the
session, which a WhatsApp or Twilio webhook does not say in its URL. A row costs two
statements per burst of turns and no connection while held.

The owner renews the leases it holds every `ttl / 3`. A process that dies (SIGKILL, a
lost host) stops renewing; `orphans()` then finds, on any instance, sessions whose user
messages are still pending with no live lease, and the instance that claims them runs
their turns (gateway/conversations.py `adopt_orphans`). The claim also returns the
session's `version`, and a hot entry of another version is dropped first, so a turn never
answers from state another process has already moved on from.

On SQLite there is one process (gateway/sqlite_owner.py): `LocalLeases` grants every claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.events import now_ms
from gateway.store.models import DB_NOW_MS

log = logging.getLogger("gateway.turn_lease")

_NOW = DB_NOW_MS  # the database's clock: every instance compares against the same one

# Claims and releases that queue up while one statement runs go together in the next:
# one transaction for every turn starting (or ending) at that moment, in session order so
# two instances claiming overlapping sets lock their rows in the same order.
_CLAIM = text(
    f"""
    INSERT INTO turn_leases AS l (session_id, owner, expires_at, dirty)
    SELECT sid, :me, {_NOW} + :ttl, false FROM unnest(CAST(:sids AS text[])) AS sid ORDER BY sid
    ON CONFLICT (session_id) DO UPDATE SET
        owner = CASE WHEN l.expires_at < {_NOW} THEN excluded.owner ELSE l.owner END,
        dirty = (l.expires_at >= {_NOW} AND l.owner <> excluded.owner),
        expires_at = CASE WHEN l.expires_at < {_NOW} THEN excluded.expires_at ELSE l.expires_at END
    RETURNING l.session_id, l.owner, (SELECT version FROM sessions WHERE id = l.session_id)
    """
)
_LET_GO = text(
    "DELETE FROM turn_leases WHERE session_id = ANY(:sids) AND owner = :me AND NOT dirty RETURNING session_id"
)
_AGAIN = text(
    f"""
    UPDATE turn_leases SET dirty = false, expires_at = {_NOW} + :ttl
    WHERE session_id = ANY(:sids) AND owner = :me
    RETURNING session_id, (SELECT version FROM sessions WHERE id = turn_leases.session_id)
    """
)
_RENEW = text(
    f"UPDATE turn_leases SET expires_at = {_NOW} + :ttl WHERE owner = :me AND session_id = ANY(:sids)"
)
_DROP_ALL = text("DELETE FROM turn_leases WHERE owner = :me AND session_id <> :keep")
_ORPHANS = text(
    f"""
    SELECT DISTINCT m.session_id FROM messages m JOIN sessions s ON s.id = m.session_id
    WHERE m.pending AND m.role = 'user' AND m.created_at < :before
      AND s.status = 'active' AND NOT s.paused AND s.channel <> ALL(:skip)
      AND NOT EXISTS (
          SELECT 1 FROM turn_leases l WHERE l.session_id = m.session_id AND l.expires_at >= {_NOW}
      )
    LIMIT :limit
    """
)


class TurnSuperseded(Exception):
    """A reply answers messages another instance answered meanwhile (this turn outlived its
    lease): it is not stored, and the turn ends quietly."""


class TurnLeases(Protocol):
    async def claim(self, session_id: str) -> bool:
        """Ours to run now (True), or marked for the owner's next turn (False)."""
        ...

    async def release(self, session_id: str) -> bool:
        """Let go; True when another process marked the session meanwhile: run again."""
        ...

    async def release_all(self) -> None: ...

    async def orphans(self, skip_channels: Sequence[str]) -> list[str]: ...

    async def run(self) -> None: ...


class LocalLeases:
    """One process (SQLite, or one instance): every claim is granted, nothing to renew."""

    async def claim(self, session_id: str) -> bool:
        return True

    async def release(self, session_id: str) -> bool:
        return False

    async def release_all(self) -> None:
        return None

    async def orphans(self, skip_channels: Sequence[str]) -> list[str]:
        return []

    async def run(self) -> None:
        await asyncio.Event().wait()


class SharedLeases:
    """Leases in PostgreSQL's `turn_leases`, shared by every instance on the database."""

    def __init__(
        self,
        engine: AsyncEngine,
        owner: str,
        *,
        ttl_seconds: float,
        stale: Callable[[str, int | None], None],
    ) -> None:
        self._engine = engine
        self.owner = owner
        self._ttl_ms = int(ttl_seconds * 1000)
        self._stale = stale  # drops the hot state of a session unless it has this version
        self._held: set[str] = set()
        self.renewed_at = 0.0
        # A row of its own says this instance is alive (its outbox sends are its own).
        self.instance_key = f"instance:{owner}"
        self._claims = _Together(self._claim_many)
        self._releases = _Together(self._release_many)

    @property
    def ttl_seconds(self) -> float:
        return self._ttl_ms / 1000

    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def claim(self, session_id: str) -> bool:
        answer = self._claims.submit(session_id)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The batch goes on without us: a lease it grants is not renewed (it expires by
            # itself within a lease), as when a claim was cut off after its commit.
            answer.add_done_callback(lambda f: self._unwanted(session_id, f))
            raise

    def _unwanted(self, session_id: str, answer: asyncio.Future[bool]) -> None:
        if not answer.cancelled() and answer.exception() is None and answer.result():
            self._held.discard(session_id)

    async def _claim_many(self, sids: list[str]) -> dict[str, bool]:
        async with self._engine.begin() as c:
            rows = (await c.execute(_CLAIM, {"sids": sids, "me": self.owner, "ttl": self._ttl_ms})).all()
        out = dict.fromkeys(sids, False)
        for sid, owner, version in rows:
            if owner == self.owner:
                out[sid] = True
                self._held.add(sid)
                self._stale(sid, None if version is None else int(version))
        return out

    async def release(self, session_id: str) -> bool:
        return await asyncio.shield(self._releases.submit(session_id))

    async def _release_many(self, sids: list[str]) -> dict[str, bool]:
        """For each session: True when another process marked it meanwhile (run again)."""
        params = {"sids": sids, "me": self.owner, "ttl": self._ttl_ms}
        try:
            async with self._engine.begin() as c:
                gone = {str(r[0]) for r in await c.execute(_LET_GO, params)}
                rest = [sid for sid in sids if sid not in gone]
                again = {}
                if rest:
                    again = {str(r[0]): r[1] for r in await c.execute(_AGAIN, {**params, "sids": rest})}
        except BaseException:
            self._held.difference_update(sids)  # not renewed any more: they expire by themselves
            raise
        out: dict[str, bool] = {}
        for sid in sids:
            if sid in gone:
                self._held.discard(sid)  # let go: not renewed any more
                out[sid] = False
            elif sid in again:
                version = again[sid]
                self._stale(sid, None if version is None else int(version))
                out[sid] = True
            else:
                # Expired and taken while we ran (we could not renew it in time): the new
                # owner read the store when it claimed, so nothing is lost; say so.
                self._held.discard(sid)
                log.warning("turn lease lost while held", extra={"session_id": sid})
                out[sid] = False
        return out

    def forget(self, session_id: str) -> None:
        self._held.discard(session_id)

    async def register(self) -> None:
        """At start, before the outbox claims anything: this instance is alive."""
        if not await self.claim(self.instance_key):
            raise RuntimeError(f"another live instance is named {self.owner!r}")

    async def release_all(self) -> None:
        """Shutdown: let every turn lease go at once, so others adopt what is left without
        waiting. The instance row stays (renewed) until `retire`: the outbox still sends."""
        self._held = {self.instance_key} & self._held
        async with self._engine.begin() as c:
            await c.execute(_DROP_ALL, {"me": self.owner, "keep": self.instance_key})

    async def close(self) -> None:
        await self._engine.dispose()

    async def retire(self) -> None:
        """The very end of a shutdown (the outbox stopped): this instance is gone."""
        self._held.clear()
        async with self._engine.begin() as c:
            await c.execute(_DROP_ALL, {"me": self.owner, "keep": ""})

    async def orphans(self, skip_channels: Sequence[str], limit: int = 500) -> list[str]:
        """Sessions with user messages pending for longer than a lease and no live lease:
        their owner died (or never claimed). Any instance may run them; the claim decides."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                _ORPHANS,
                {
                    "before": now_ms() - self._ttl_ms,
                    "skip": list(skip_channels) or [""],
                    "limit": limit,
                },
            )
            return [str(r[0]) for r in rows]

    async def renew(self) -> None:
        sids = list(self._held)
        if sids:
            async with self._engine.begin() as c:
                await c.execute(_RENEW, {"me": self.owner, "ttl": self._ttl_ms, "sids": sids})
        self.renewed_at = asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Renew every `ttl / 3`; a renewal that fails is retried at the next tick (two more
        before the leases expire)."""
        while True:
            try:
                await self.renew()
            except Exception as exc:
                log.warning("could not renew turn leases: %r", exc)
            await asyncio.sleep(self._ttl_ms / 3000)


class _Together:
    """Questions about sessions that queue up while one statement runs are answered by the
    next, together: `submit(sid)` is the answer of the batch that carries it."""

    def __init__(self, run: Callable[[list[str]], Awaitable[dict[str, bool]]]) -> None:
        self._run = run
        self._queued: dict[str, list[asyncio.Future[bool]]] = {}
        self._task: asyncio.Task[None] | None = None

    def submit(self, session_id: str) -> asyncio.Future[bool]:
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(session_id, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return waiter

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, {}
            try:
                answers = await self._run(sorted(batch))
            except BaseException as exc:
                for waiters in batch.values():
                    for w in waiters:
                        if not w.done():
                            w.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for sid, waiters in batch.items():
                for w in waiters:
                    if not w.done():
                        w.set_result(answers.get(sid, False))


def stale_dropper(
    get_version: Callable[[str], int | None], drop: Callable[[Iterable[str]], None]
) -> Callable[[str, int | None], None]:
    """The `stale` callback: drop a session's hot entry unless it holds `version`."""

    def stale(session_id: str, version: int | None) -> None:
        have = get_version(session_id)
        if have is not None and have != version:
            drop([session_id])

    return stale
