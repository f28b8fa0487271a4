"""Phone calls: a final `prompt` on the ConversationRelay socket → the first `text` token.

The gateway (`bench.serve_phone`: agent `phone`, echo at zero delay, a Twilio voice
number, `token_flush_ms` at its default) is called as Twilio calls it: a signed
`POST /twilio/voice` (the incoming call) answers with TwiML whose
`<ConversationRelay url>` is the relay socket and whose `<Parameter>`s go back in the
`setup` frame's `customParameters`; the socket's handshake carries `X-Twilio-Signature`
over the `ws://` URL (no parameters). Each turn is
`{"type":"prompt","voicePrompt":…,"last":true}`, answered by
`{"type":"text","token":…,"last":false}` frames and `{"type":"text","token":"","last":true}`.
A call sends one prompt at a time, the next once the reply's `last: true` has arrived.
Every call comes from a new caller number, so no turn finds earlier conversations of
its contact to restore (a returning caller's turns read those too).

- **TTFT** = the prompt frame written → the first `text` frame with a non-empty token.
- **Turn** = prompt written → the `last: true` frame; the reply text is checked.
- One call at a time: C1 calls x P1 prompts, each call's first prompt (which also
  tells that `setup` was handled) unmeasured. Turns/s = turns / Σ turn times.
- Concurrent: C calls at once (each answered and set up first, with its unmeasured
  prompt), each sending P prompts in turn; turns/s = turns / wall time; the server's
  CPU over that window.

The same prompt text is measured three more ways:

- **gateway chat**: the same agent on the gateway's chat WebSocket (a token minted
  with `POST /v1/tokens`, `/chat/ws?token=…`, `chat.started`, then
  `{"event":"message"}` → first `chat.token`), same counts; a fresh chat per "call".
  One at a time, relay and chat run on the same gateway process with their turns
  alternating (a call and a chat open side by side; relay, chat, chat, relay, …), so
  both see the same machine state: single-turn latency on a 2-core VM moves by ±50 %
  between runs with the state of the idle cores, which would otherwise swamp a
  difference of a few ms. The concurrent runs use a fresh gateway each.
- **bare WS echo**: `bench.serve_bare`'s `/chat/ws` (the suite's bare WebSocket
  baseline: the words streamed back, no auth, no storage, no bus), same counts.
- **agent called directly**: `EchoAgent().run(turn)` in this process, no gateway, a
  `Turn` built as `gateway.conversations` builds one; first `TextDelta` and whole
  reply timed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.chat import ChatConn
from bench.clients import WsClient
from bench.common import (
    HOST,
    LIVE_PIDS,
    ROOT,
    LoadMonitor,
    ServerProc,
    free_port,
    mint_tokens,
    percentile,
    running,
    wait_for_quiet,
)
from bench.report import Row
from bench.serve_phone import ACCOUNT_SID, AGENT, AUTH_TOKEN, PHONE_NUMBER, TWILIO_ENV

# What a caller says: a short utterance, as a phone turn is (14 words → 14 tokens).
PROMPT = "Hi, I would like to check the status of my order from last Tuesday"


@dataclass
class RelayParams:
    text: str = PROMPT
    calls: int = 10  # one at a time: calls …
    prompts: int = 20  # … x measured prompts each (after one unmeasured)
    conc_calls: int = 20  # concurrent calls …
    conc_prompts: int = 10  # … x measured prompts each (after one unmeasured)
    direct_turns: int = 2000  # the agent called directly
    direct_warmup: int = 200


# ------------------------------------------------------------------ the server


class PhoneGateway(ServerProc):
    """`python -m bench.serve_phone` in its own process (ServerProc knows the suite's four kinds)."""

    def __init__(self, *, log_dir: Path, args: Sequence[str] = ()) -> None:
        self.kind = "phone_gateway"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
            prefix="bench-phone-"
        )
        self.background_cores = float("nan")
        self.db_path: Path | None = Path(self._tmp.name) / "gateway.db"
        argv = [sys.executable, "-m", "bench.serve_phone", "--port", str(self.port)]
        argv += ["--db", str(self.db_path), *args]
        self.log_path = log_dir / f"{self.kind}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **TWILIO_ENV}
        )
        LIVE_PIDS.add(self.proc.pid)


@contextlib.asynccontextmanager
async def running_phone(log_dir: Path, args: Sequence[str] = ()) -> AsyncIterator[PhoneGateway]:
    """As `bench.common.running`, for `PhoneGateway`."""
    await wait_for_quiet()
    monitor = LoadMonitor()
    monitor.start()
    server = PhoneGateway(log_dir=log_dir, args=args)
    try:
        await server.wait_ready()
        server.start_profile()
        yield server
    finally:
        server.stop()
        server.background_cores = monitor.stop()


# ------------------------------------------------------------ the Twilio side


def twilio_signature(token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL + the sorted parameters' names and values."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def relay_twiml(xml: str) -> tuple[str, dict[str, str]]:
    """(the relay socket's URL, the <Parameter>s) of a <Connect><ConversationRelay> answer."""
    relay = ET.fromstring(xml).find("./Connect/ConversationRelay")
    if relay is None:
        raise RuntimeError(f"no <ConversationRelay> in {xml[:200]!r}")
    params = {p.attrib["name"]: p.attrib["value"] for p in relay.findall("Parameter")}
    return relay.attrib["url"], params


class RelayWs(WsClient):
    """The bench's raw WebSocket client, with a `Host` carrying the port and X-Twilio-Signature."""

    def __init__(self, path: str, on_message: Any, host: str, signature: str) -> None:
        super().__init__(path, on_message)
        self.host, self.signature = host, signature

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Twilio-Signature: {self.signature}\r\n\r\n".encode()
        )


class RelayCall:
    """One inbound call: TwiML, the relay socket, `setup`, then prompts one at a time."""

    def __init__(self) -> None:
        self.ws: RelayWs | None = None
        self.done: asyncio.Future[str] | None = None
        self.first: float | None = None
        self.parts: list[str] = []
        self.frames = 0
        self.session_id = ""
        self.setup: dict[str, float] = {}  # phases of answering the call, ms

    @classmethod
    async def open(cls, server: ServerProc, http: httpx.AsyncClient, n: int, text: str) -> RelayCall:
        call = cls()
        t0 = time.perf_counter()
        call_sid = f"CA{n:032x}"
        caller = f"+1555700{n % 10_000:04d}"  # a new caller per call: no earlier conversations
        form = {
            "AccountSid": ACCOUNT_SID,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": "ringing",
            "Called": PHONE_NUMBER,
            "Caller": caller,
            "Direction": "inbound",
            "From": caller,
            "To": PHONE_NUMBER,
        }
        url = f"{server.url}/twilio/voice"
        r = await http.post(
            url, data=form, headers={"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, form)}
        )
        if r.status_code != 200:
            raise RuntimeError(f"POST /twilio/voice: HTTP {r.status_code}: {r.text[:200]}")
        t1 = time.perf_counter()
        relay_url, params = relay_twiml(r.text)
        call.session_id = params["sessionId"]
        host, path = relay_url.split("://", 1)[1].split("/", 1)
        signature = twilio_signature(AUTH_TOKEN, relay_url)
        loop = asyncio.get_running_loop()
        _, ws = await loop.create_connection(
            lambda: RelayWs("/" + path, call.on_message, host, signature), HOST, server.port
        )
        call.ws = ws
        async with asyncio.timeout(30):
            await ws.opened
        t2 = time.perf_counter()
        setup = {
            "type": "setup",
            "sessionId": "VX" + f"{n:032x}",
            "accountSid": ACCOUNT_SID,
            "parentCallSid": "",
            "callSid": call_sid,
            "from": caller,
            "to": PHONE_NUMBER,
            "forwardedFrom": "",
            "callerName": "",
            "direction": "inbound",
            "callType": "PSTN",
            "callStatus": "RINGING",
            "customParameters": params,
        }
        ws.send_text(json.dumps(setup))
        await call.ask(text)  # unmeasured: its reply also says that `setup` was handled
        t3 = time.perf_counter()
        call.setup = {
            "twiml_ms": (t1 - t0) * 1000,  # POST /twilio/voice answered
            "handshake_ms": (t2 - t1) * 1000,  # the relay socket open
            "first_turn_ms": (t3 - t2) * 1000,  # setup + the first prompt's whole reply
            "total_ms": (t3 - t0) * 1000,
        }
        return call

    def on_message(self, payload: bytes, t_perf: float, _t_wall: float) -> None:
        obj = json.loads(payload)
        kind = obj.get("type")
        if kind == "text":
            token = obj.get("token") or ""
            if token:
                self.frames += 1
                if self.first is None:
                    self.first = t_perf
                self.parts.append(token)
            if obj.get("last") and self.done is not None and not self.done.done():
                self.done.set_result("".join(self.parts))
        elif self.done is not None and not self.done.done():
            self.done.set_exception(RuntimeError(f"relay said {obj}"))

    async def ask(self, text: str) -> tuple[float, float, int]:
        """(ttft seconds, turn seconds, text frames with a token) for one final prompt."""
        assert self.ws is not None
        self.first, self.parts, self.frames = None, [], 0
        self.done = asyncio.get_running_loop().create_future()
        closed = self.ws.closed
        either: set[asyncio.Future[Any]] = {self.done, closed}
        sent = time.perf_counter()
        self.ws.send_text(json.dumps({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True}))
        async with asyncio.timeout(60):
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        end = time.perf_counter()
        if not self.done.done():
            raise RuntimeError(f"relay socket closed ({closed.result()}) before the reply")
        reply = self.done.result()
        if reply != text or self.first is None:
            raise RuntimeError(f"bad reply: {reply!r} for {text!r}")
        return self.first - sent, end - sent, self.frames

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


# -------------------------------------------------------------- measurements


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _summary(ttft_s: list[float], turn_s: list[float], frames: list[int]) -> dict[str, Any]:
    ttft = [t * 1000 for t in ttft_s]
    turn = [t * 1000 for t in turn_s]
    return {
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_max_ms": max(ttft, default=float("nan")),
        "turn_p50_ms": percentile(turn, 50),
        "turn_p99_ms": percentile(turn, 99),
        "frames_per_turn": sum(frames) / len(frames) if frames else float("nan"),
        "turns": len(ttft),
    }


class Opener:
    """Opens one conversation of a kind: `relay` (a call), `chat` (gateway), `bare`."""

    def __init__(self, kind: str, server: ServerProc, text: str) -> None:
        self.kind, self.server, self.text = kind, server, text
        self.tokens: list[str] = []
        self.http: httpx.AsyncClient | None = None
        self.n = 0
        self.setups: list[dict[str, float]] = []

    async def prepare(self, count: int) -> None:
        if self.kind == "chat":
            self.tokens = await mint_tokens(self.server.url, count, agent=AGENT)
        elif self.kind == "relay" and self.http is None:
            self.http = httpx.AsyncClient(timeout=30)

    async def __call__(self) -> RelayCall | ChatConn:
        if self.kind == "relay":
            assert self.http is not None
            self.n += 1
            call = await RelayCall.open(self.server, self.http, self.n, self.text)
            self.setups.append(call.setup)
            return call
        conn = await ChatConn.open(self.server, self.tokens.pop() if self.kind == "chat" else None)
        await conn.ask(self.text)  # unmeasured, as a call's first prompt
        return conn

    def take_setups(self) -> dict[str, float]:
        """p50/p99 of each phase of answering the calls opened since the last call (relay only)."""
        setups, self.setups = self.setups, []
        return {
            f"{k.removesuffix('_ms')}_p{q}_ms": percentile([s[k] for s in setups], q)
            for k in (setups[0] if setups else {})
            for q in (50, 99)
        }

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


async def sequential(openers: dict[str, Opener], p: RelayParams) -> dict[str, Any]:
    """One conversation at a time. With several kinds on one server (relay and chat), each
    round opens one conversation of each and alternates their turns (ABAB, then BABA),
    so both see the same machine and database state; their difference is taken per pair."""
    for o in openers.values():
        await o.prepare(p.calls + 1)
        warm = await o()  # warm-up: imports, caches, the first SQLite pages
        for _ in range(5):
            await warm.ask(p.text)
        warm.close()
        o.take_setups()
    await wait_for_quiet()
    monitor = LoadMonitor()
    monitor.start()
    kinds = list(openers)
    ttft: dict[str, list[float]] = {k: [] for k in kinds}
    turn: dict[str, list[float]] = {k: [] for k in kinds}
    frames: dict[str, list[int]] = {k: [] for k in kinds}
    for _ in range(p.calls):
        convs = {k: await openers[k]() for k in kinds}
        for i in range(p.prompts):
            for k in kinds if i % 2 == 0 else kinds[::-1]:
                a, b, f = await convs[k].ask(p.text)
                ttft[k].append(a)
                turn[k].append(b)
                frames[k].append(f)
        for conv in convs.values():
            conv.close()
    background = monitor.stop()
    out: dict[str, Any] = {}
    for k in kinds:
        out[k] = _summary(ttft[k], turn[k], frames[k])
        out[k]["turns_per_s"] = len(turn[k]) / sum(turn[k])
        out[k]["background_cores"] = background
        out[k]["call_setup"] = openers[k].take_setups()
    if len(kinds) == 2:
        one, other = kinds
        diff = [(x - y) * 1000 for x, y in zip(ttft[one], ttft[other], strict=True)]
        out[f"{one}_minus_{other}"] = {
            "ttft_diff_p50_ms": percentile(diff, 50),
            "ttft_diff_mean_ms": sum(diff) / len(diff),
            "pairs": len(diff),
        }
    return out


async def concurrent(open_conv: Opener, p: RelayParams) -> dict[str, Any]:
    await open_conv.prepare(p.conc_calls)
    await wait_for_quiet()
    open_conv.take_setups()
    convs = await asyncio.gather(*(open_conv() for _ in range(p.conc_calls)))
    setups = open_conv.take_setups()
    ttft: list[float] = []
    turn: list[float] = []
    frames: list[int] = []

    async def talk(conv: RelayCall | ChatConn) -> None:
        for _ in range(p.conc_prompts):
            a, b, f = await conv.ask(p.text)
            ttft.append(a)
            turn.append(b)
            frames.append(f)

    monitor = LoadMonitor()
    monitor.start()
    cpu0, client0, t0 = open_conv.server.cpu_seconds(), _client_cpu(), time.perf_counter()
    await asyncio.gather(*(talk(c) for c in convs))
    wall = time.perf_counter() - t0
    out = _summary(ttft, turn, frames)
    out["turns_per_s"] = len(turn) / wall
    out["wall_s"] = wall
    out["server_cores"] = (open_conv.server.cpu_seconds() - cpu0) / wall
    out["server_cpu_ms_per_turn"] = (open_conv.server.cpu_seconds() - cpu0) * 1000 / len(turn)
    out["client_cores"] = (_client_cpu() - client0) / wall
    out["background_cores"] = monitor.stop()
    out["call_setup"] = setups
    for c in convs:
        c.close()
    return out


async def measure_c1(kinds: Sequence[str], p: RelayParams, log_dir: Path) -> dict[str, Any]:
    """One at a time: relay and chat interleaved on one gateway, or bare alone."""
    server_cm = running("bare", log_dir) if kinds == ["bare"] else running_phone(log_dir)
    async with server_cm as server:
        openers = {k: Opener(k, server, p.text) for k in kinds}
        try:
            out = await sequential(openers, p)
        finally:
            for o in openers.values():
                await o.aclose()
    out["server_background_cores"] = server.background_cores
    return out


async def measure_conc(kind: str, p: RelayParams, log_dir: Path) -> dict[str, Any]:
    """Concurrent conversations of one kind on a fresh server."""
    server_cm = running("bare", log_dir) if kind == "bare" else running_phone(log_dir)
    async with server_cm as server:
        opener = Opener(kind, server, p.text)
        try:
            out = await concurrent(opener, p)
        finally:
            await opener.aclose()
    out["server_background_cores"] = server.background_cores
    return out


async def direct(p: RelayParams) -> dict[str, Any]:
    """The echo agent in this process: `EchoAgent().run(turn)`, no gateway at all."""
    from gateway.agents.base import ChatMessage, TextDelta, Turn
    from gateway.agents.echo import EchoAgent
    from gateway.events import ContactRef
    from gateway.types import Channel

    config = _agent_config()
    agent = EchoAgent()
    contact = ContactRef(channel=Channel.PHONE, address="+15557000001")

    def turn_for(i: int) -> Turn:
        return Turn(
            turn_id=f"msg_bench{i}",
            session_id="call-bench",
            agent_id=AGENT,
            agent=config,
            channel=Channel.PHONE,
            contact=contact,
            messages=(ChatMessage(role="user", content=p.text, message_id=f"msg_user{i}"),),
            history=(),
            prompt=config.prompt,
        )

    async def one(i: int) -> tuple[float, float]:
        turn = turn_for(i)
        t0 = time.perf_counter()
        stream = agent.run(turn)
        first = await anext(stream)
        t1 = time.perf_counter()
        parts = [first.text] if isinstance(first, TextDelta) else []
        async for out in stream:
            if isinstance(out, TextDelta):
                parts.append(out.text)
        t2 = time.perf_counter()
        if "".join(parts) != p.text:
            raise RuntimeError("echo agent: wrong reply")
        return t1 - t0, t2 - t0

    for i in range(p.direct_warmup):
        await one(i)
    ttft: list[float] = []
    turn: list[float] = []
    for i in range(p.direct_turns):
        a, b = await one(i)
        ttft.append(a)
        turn.append(b)
    out = _summary(ttft, turn, [])
    out["turns_per_s"] = len(turn) / sum(turn)
    return out


def _agent_config() -> Any:
    """Agent `phone`'s AgentConfig, as `bench.serve_phone` configures it."""
    from bench.serve_phone import settings_for

    return settings_for(0, Path("unused.db")).agents[AGENT]


async def run(p: RelayParams, log_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    bare_c1 = await measure_c1(["bare"], p, log_dir)
    gw_c1 = await measure_c1(["relay", "chat"], p, log_dir)
    bare = {"c1": bare_c1["bare"], "conc": await measure_conc("bare", p, log_dir)}
    chat = {"c1": gw_c1["chat"], "conc": await measure_conc("chat", p, log_dir)}
    relay = {"c1": gw_c1["relay"], "conc": await measure_conc("relay", p, log_dir)}
    paired = gw_c1["relay_minus_chat"]
    agent = await direct(p)
    r1, c1, b1 = relay["c1"], chat["c1"], bare["c1"]
    rc, cc, bc = relay["conc"], chat["conc"], bare["conc"]
    n = p.conc_calls
    vs_bare, vs_chat, vs_direct = "(vs bare WS echo)", "(vs gateway chat WS)", "(vs agent called directly)"
    rows = [
        Row(
            "relay", f"relay TTFT p50, 1 call at a time {vs_bare}", "ms", r1["ttft_p50_ms"], b1["ttft_p50_ms"]
        ),
        Row(
            "relay", f"relay TTFT p99, 1 call at a time {vs_bare}", "ms", r1["ttft_p99_ms"], b1["ttft_p99_ms"]
        ),
        Row(
            "relay", f"relay TTFT p50, 1 call at a time {vs_chat}", "ms", r1["ttft_p50_ms"], c1["ttft_p50_ms"]
        ),
        Row(
            "relay", f"relay TTFT p99, 1 call at a time {vs_chat}", "ms", r1["ttft_p99_ms"], c1["ttft_p99_ms"]
        ),
        Row(
            "relay",
            f"relay TTFT p50, 1 call at a time {vs_direct}",
            "µs",
            r1["ttft_p50_ms"] * 1000,
            agent["ttft_p50_ms"] * 1000,
        ),
        Row(
            "relay",
            f"relay TTFT p99, 1 call at a time {vs_direct}",
            "µs",
            r1["ttft_p99_ms"] * 1000,
            agent["ttft_p99_ms"] * 1000,
        ),
        Row(
            "relay",
            f"chat TTFT p50, same agent, 1 chat at a time {vs_bare}",
            "ms",
            c1["ttft_p50_ms"],
            b1["ttft_p50_ms"],
        ),
        Row(
            "relay",
            f"chat TTFT p99, same agent, 1 chat at a time {vs_bare}",
            "ms",
            c1["ttft_p99_ms"],
            b1["ttft_p99_ms"],
        ),
        Row(
            "relay",
            "relay TTFT - chat TTFT, p50 of the paired differences, 1 at a time",
            "ms",
            paired["ttft_diff_p50_ms"],
            None,
        ),
        Row(
            "relay", f"relay turns/s, 1 call at a time {vs_bare}", "1/s", r1["turns_per_s"], b1["turns_per_s"]
        ),
        Row(
            "relay", f"relay turns/s, 1 call at a time {vs_chat}", "1/s", r1["turns_per_s"], c1["turns_per_s"]
        ),
        Row(
            "relay",
            f"relay TTFT p50, {n} concurrent calls {vs_bare}",
            "ms",
            rc["ttft_p50_ms"],
            bc["ttft_p50_ms"],
        ),
        Row(
            "relay",
            f"relay TTFT p99, {n} concurrent calls {vs_bare}",
            "ms",
            rc["ttft_p99_ms"],
            bc["ttft_p99_ms"],
        ),
        Row(
            "relay",
            f"relay TTFT p50, {n} concurrent calls {vs_chat}",
            "ms",
            rc["ttft_p50_ms"],
            cc["ttft_p50_ms"],
        ),
        Row(
            "relay",
            f"relay TTFT p99, {n} concurrent calls {vs_chat}",
            "ms",
            rc["ttft_p99_ms"],
            cc["ttft_p99_ms"],
        ),
        Row(
            "relay",
            f"relay turns/s, {n} concurrent calls {vs_bare}",
            "1/s",
            rc["turns_per_s"],
            bc["turns_per_s"],
        ),
        Row(
            "relay",
            f"relay turns/s, {n} concurrent calls {vs_chat}",
            "1/s",
            rc["turns_per_s"],
            cc["turns_per_s"],
        ),
        Row(
            "relay",
            f"server CPU during {n} concurrent calls {vs_chat}",
            "cores",
            rc["server_cores"],
            cc["server_cores"],
        ),
    ]
    details = {
        "params": p.__dict__,
        "relay": relay,
        "chat": chat,
        "bare": bare,
        "direct": agent,
        "relay_minus_chat_c1": paired,
        "gateway_c1_server_background_cores": gw_c1["server_background_cores"],
        "bare_c1_server_background_cores": bare_c1["server_background_cores"],
    }
    return rows, details
