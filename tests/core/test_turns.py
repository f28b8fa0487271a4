"""The turn runner: a turn that crashes is retried without a restart; a burst is bounded."""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import OperationalError

from gateway.turns import TurnRunner


async def test_a_turn_that_fails_on_the_database_is_retried_until_it_succeeds() -> None:
    calls: list[str] = []

    async def run(session_id: str) -> None:
        calls.append(session_id)
        if len(calls) < 4:
            raise OperationalError("SELECT 1", {}, Exception("connection lost"))

    runner = TurnRunner(run, retry_base_seconds=0.01)
    runner.submit("s1")
    async with asyncio.timeout(5):
        while len(calls) < 4:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert calls == ["s1"] * 4  # answered after the third failure, then nothing more


async def test_a_turn_that_keeps_failing_on_a_bug_is_given_up_and_reported() -> None:
    calls: list[str] = []
    given_up: list[tuple[str, str]] = []

    async def run(session_id: str) -> None:
        calls.append(session_id)
        raise KeyError("bug")

    async def give_up(session_id: str, exc: BaseException) -> None:
        given_up.append((session_id, repr(exc)))

    runner = TurnRunner(run, give_up=give_up, retry_base_seconds=0.01)
    runner.submit("s1")
    async with asyncio.timeout(5):
        while not given_up:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert len(calls) == 4 and given_up == [("s1", "KeyError('bug')")]


async def test_no_more_turns_than_the_cap_run_at_once() -> None:
    running = 0
    peak = 0
    done: list[str] = []

    async def run(session_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        done.append(session_id)

    runner = TurnRunner(run, max_concurrent=5)
    for i in range(50):
        runner.submit(f"s{i}")
    async with asyncio.timeout(5):
        while len(done) < 50:
            await asyncio.sleep(0.01)
    assert peak == 5


async def test_shutdown_cancels_a_scheduled_retry() -> None:
    calls: list[str] = []

    async def run(session_id: str) -> None:
        calls.append(session_id)
        raise OSError("database unreachable")

    runner = TurnRunner(run, retry_base_seconds=0.2)
    runner.submit("s1")
    await asyncio.sleep(0.05)
    await runner.shutdown(1)
    await asyncio.sleep(0.4)
    assert calls == ["s1"]  # the retry is left to the next start (the messages are pending)
