"""The store's write lock: FIFO, urgent writers first, cancellation never leaks the lock."""

from __future__ import annotations

import asyncio

from gateway.store.lock import WriteLock


async def test_urgent_writers_jump_the_queue_and_the_rest_keep_their_order() -> None:
    lock = WriteLock()
    order: list[str] = []

    async def writer(name: str, urgent: bool = False) -> None:
        async with lock.hold(urgent=urgent):
            order.append(name)
            await asyncio.sleep(0)

    async with lock.hold():
        tasks = [asyncio.create_task(writer(f"turn{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(writer("outbox", urgent=True)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["outbox", "turn0", "turn1", "turn2"]


async def test_a_cancelled_waiter_neither_holds_nor_blocks_the_lock() -> None:
    lock = WriteLock()
    got: list[str] = []

    async def writer(name: str) -> None:
        async with lock.hold():
            got.append(name)

    async with lock.hold():
        first = asyncio.create_task(writer("cancelled"))
        second = asyncio.create_task(writer("next"))
        await asyncio.sleep(0)
        first.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert got == ["next"]
    async with asyncio.timeout(1), lock.hold():  # free again
        pass
