"""The feeds' fan-out (gateway/bus/fanout.py) over the real in-process bus: a reader is
pushed only the events it wants, follows agents its scope sees later, and drops an
agent its scope stops seeing."""

from __future__ import annotations

import asyncio

from gateway.bus.base import SubscriptionClosed
from gateway.bus.facade import Bus
from gateway.bus.fanout import Fanout, Inbox, Interest
from gateway.events import Event


def drain(inbox: Inbox) -> list[tuple[str, str]]:
    out = []
    while (env := inbox.get_nowait()) is not None:
        out.append((env.type, env.agent))
    return out


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_reader_is_pushed_only_its_agents_and_types() -> None:
    bus = Bus.from_url("memory://")
    fanout = Fanout(bus)
    async with (
        fanout.open(Interest(agents=frozenset({"a"}), types=frozenset({"user.message"})), 100) as only_a,
        fanout.open(Interest(agents=frozenset({"a", "b"})), 100) as a_and_b,
        fanout.open(Interest(agents=frozenset({"b"}), tokens=True), 100) as b_tokens,
    ):
        for agent in ("a", "b", "c"):
            for kind in ("user.message", "bot.token", "bot.message"):
                bus.publish(
                    Event(type=kind, agent=agent, session_id="s", seq=None if kind == "bot.token" else 1)
                )
        await settle()
        assert drain(only_a) == [("user.message", "a")]
        assert drain(a_and_b) == [
            ("user.message", "a"),
            ("bot.message", "a"),
            ("user.message", "b"),
            ("bot.message", "b"),
        ]
        assert drain(b_tokens) == [("user.message", "b"), ("bot.token", "b"), ("bot.message", "b")]
    assert fanout.reader_count() == 0


async def test_a_scoped_reader_follows_agents_seen_later_and_asks_once_per_agent() -> None:
    bus = Bus.from_url("memory://")
    fanout = Fanout(bus)
    tenant_of = {"mine": "acme", "later": "acme", "theirs": "other"}
    asked: list[str] = []

    def sees(agent: str) -> bool:
        asked.append(agent)
        return tenant_of.get(agent) == "acme"

    async with fanout.open(Interest(agents=frozenset({"mine"}), late=sees), 100) as inbox:
        for _ in range(3):
            for agent in ("mine", "later", "theirs"):
                bus.publish(Event(type="user.message", agent=agent, seq=1))
        await settle()
        assert drain(inbox) == [("user.message", "mine"), ("user.message", "later")] * 3
        assert sorted(asked) == ["later", "mine", "theirs"]

        # The directory moves "later" to another tenant: the reader drops it at once.
        tenant_of["later"] = "other"
        fanout.agent_changed("later")
        bus.publish(Event(type="user.message", agent="later", seq=2))
        # ...and an agent that comes into the scope is followed from the change on.
        tenant_of["theirs"] = "acme"
        fanout.agent_changed("theirs")
        bus.publish(Event(type="user.message", agent="theirs", seq=3))
        await settle()
        assert drain(inbox) == [("user.message", "theirs")]


async def test_a_reader_that_falls_behind_is_closed_as_overflowed_and_others_keep_flowing() -> None:
    bus = Bus.from_url("memory://")
    fanout = Fanout(bus)
    interest = Interest(agents=frozenset({"a"}))
    async with fanout.open(interest, 3) as slow, fanout.open(interest, 100) as fast:
        for i in range(5):
            bus.publish(Event(type="user.message", agent="a", seq=i + 1))
        await settle()
        assert slow.closed and slow.overflowed
        assert len(drain(fast)) == 5
        try:
            await slow.get()
            raise AssertionError("an overflowed inbox must end")
        except SubscriptionClosed as exc:
            assert exc.overflowed


async def test_the_bus_going_away_ends_every_reader() -> None:
    bus = Bus.from_url("memory://")
    fanout = Fanout(bus)
    async with fanout.open(Interest(agents=frozenset({"a"})), 10) as inbox:
        await bus.disconnect()
        await settle()
        assert inbox.closed and not inbox.overflowed


async def test_an_agent_socket_follows_each_agent_it_registers() -> None:
    bus = Bus.from_url("memory://")
    fanout = Fanout(bus)
    async with fanout.open(Interest(agents=frozenset()), 100) as inbox:
        bus.publish(Event(type="user.message", agent="a", seq=1))
        await settle()
        fanout.follow(inbox, "a")
        bus.publish(Event(type="user.message", agent="a", seq=2))
        bus.publish(Event(type="user.message", agent="b", seq=3))
        await settle()
        envs = []
        while (env := inbox.get_nowait()) is not None:
            envs.append((env.agent, env.seq))
        assert envs == [("a", 2)]
