"""The Redis backend: several gateway processes share one event stream.

Pub/sub, not streams. The event log in the database is already the durable,
commit-ordered history that every reader resumes from; a Redis stream would copy
it (memory to trim, ids unrelated to `seq`), and its order would still be the order
of the XADDs, not of the commits, since instances publish after their own commit.
So Redis only carries the news fast, fire-and-forget, and the `Sequencer` turns
what arrives into the log's order: a gap or a loss (a reconnect, Redis down) is
filled from the store, and a timer compares the store's last `seq` with what was
delivered, so even a lost last event arrives within `bus_catch_up_seconds`.

One Redis channel per bus carries every topic: every instance needs the global
feed anyway, and a local in-process fan-out (the memory backend) hands each
message to the topics' subscribers. Each message is `origin\\ttopic\\ttopic…\\n`
followed by the event's bytes; an instance skips its own (it delivered them
locally at publish time, without the round trip).

Publishing never blocks and never fails: a writer task sends what queued up in one
pipeline; when Redis is unreachable the batch is dropped (the store has it) and
readers of this instance keep getting events through the store timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.bus.base import Subscription
from gateway.bus.memory import MemoryBackend
from gateway.bus.sequencer import Fill, LastSeq, Sequencer, Topics
from gateway.errors import ConfigError

log = logging.getLogger("gateway.bus")

MAX_OUTGOING = 10_000
RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0)


def parse_bus_url(url: str) -> tuple[str, str]:
    """The URL for the client, and the channel name.

    Pub/sub channels are not scoped by the database number, so the channel carries
    it: `redis://h:6379/3` publishes on `switchboard:bus:3`. `?channel=NAME` picks
    another name (two deployments, or tests, sharing one Redis).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"bus_url: expected redis:// or rediss://, got {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    channel = next((v for k, v in query if k == "channel"), "")
    rest = [(k, v) for k, v in query if k != "channel"]
    db = parts.path.strip("/") or "0"
    client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return client_url, channel or f"switchboard:bus:{db}"


def _seq(payload: bytes) -> int | None:
    """The `seq` in an envelope's header line (gateway/codec.py: type, seq, agent, session)."""
    head = payload[: payload.find(b"\n")]
    fields = head.split(b"\t", 2)
    return int(fields[1]) if len(fields) > 1 and fields[1] else None


class RedisBackend:
    def __init__(self, url: str, fill: Fill, last_seq: LastSeq, *, catch_up_seconds: float = 1.0) -> None:
        self._url, self.channel = parse_bus_url(url)
        self._origin = os.urandom(8).hex().encode()
        self._local = MemoryBackend()
        self.sequencer = Sequencer(self._deliver, fill, last_seq)
        self._catch_up_seconds = catch_up_seconds
        self._redis: aioredis.Redis | None = None
        self._out: deque[bytes] = deque()
        self._out_ready = asyncio.Event()
        # publish(topic, payload) is called once per topic with the same bytes object
        # (gateway/bus/facade.py): consecutive calls with it make one unit, one message.
        self._unit: tuple[list[str], bytes] | None = None
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False  # the subscriber connection is up
        self._subscribed = asyncio.Event()
        self.lost = 0  # messages not sent because Redis was unreachable

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),  # failures surface here; the loops below reconnect
        )

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._redis = self._client()
        await self.sequencer.start()
        self._tasks = [
            asyncio.create_task(self._reader(), name="bus-redis-reader"),
            asyncio.create_task(self._writer(), name="bus-redis-writer"),
            asyncio.create_task(self.sequencer.run(self._catch_up_seconds), name="bus-sequencer"),
        ]
        # Start with the subscription in place when Redis is there; without it the
        # gateway still starts (the store timer carries the events until it returns).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._subscribed.wait()
        if not self.connected:
            log.warning("bus: Redis is not reachable; events reach other instances' feeds from the store")

    async def disconnect(self) -> None:
        self._flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._local.disconnect()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def ping(self) -> None:
        if self._redis is None:
            raise ConnectionError("bus not connected")
        await self._redis.ping()

    def subscribe(self, topic: str, maxsize: int) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._local.subscribe(topic, maxsize)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: bytes) -> None:
        unit = self._unit
        if unit is not None and unit[1] is payload:
            unit[0].append(topic)
            return
        self._flush()
        self._unit = ([topic], payload)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        unit, self._unit = self._unit, None
        if unit is None:
            return
        topics, payload = tuple(unit[0]), unit[1]
        self.sequencer.offer(_seq(payload), topics, payload)
        if any("\t" in t or "\n" in t for t in topics):
            return  # not representable on the wire; local subscribers have it
        if len(self._out) >= MAX_OUTGOING:
            self._out.popleft()
            self.lost += 1
        self._out.append(b"\t".join((self._origin, *(t.encode() for t in topics))) + b"\n" + payload)
        self._out_ready.set()

    async def _writer(self) -> None:
        failures = 0
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            while self._out:
                batch = list(self._out)
                self._out.clear()
                try:
                    assert self._redis is not None
                    pipe = self._redis.pipeline(transaction=False)
                    for message in batch:
                        pipe.publish(self.channel, message)
                    await pipe.execute()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Dropped: the events are in the store, and every reader catches up from it.
                    self.lost += len(batch)
                    if failures == 0:
                        log.warning("bus: cannot publish to Redis (%s)", type(exc).__name__)
                    await asyncio.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
                    failures += 1

    # ------------------------------------------------------------------ receiving

    def _deliver(self, topics: Topics, payload: bytes) -> None:
        for topic in topics:
            self._local.publish(topic, payload)

    async def _reader(self) -> None:
        failures = 0
        while True:
            client = self._client()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(timeout=self._catch_up_seconds)
                    if msg is None:
                        await pubsub.ping()  # a half-open connection shows up here
                        continue
                    if msg["type"] == "subscribe":
                        if not self.connected:
                            log.info("bus: subscribed to Redis channel %s", self.channel)
                        self.connected = True
                        self._subscribed.set()
                        failures = 0
                        self.sequencer.catch_up()  # what was published while we were away
                    elif msg["type"] == "message":
                        self._receive(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected or failures == 0:
                    log.warning("bus: Redis subscription lost (%s); reconnecting", type(exc).__name__)
                self.connected = False
                self.sequencer.catch_up()
                await asyncio.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
                failures += 1
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _receive(self, data: bytes) -> None:
        head, _, payload = data.partition(b"\n")
        fields = head.split(b"\t")
        if fields[0] == self._origin:
            return
        try:
            seq = _seq(payload)
        except ValueError:
            log.warning("bus: malformed message on %s skipped", self.channel)
            return
        self.sequencer.offer(seq, tuple(f.decode() for f in fields[1:]), payload)
