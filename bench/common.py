"""Shared helpers: server subprocesses, /proc readings, statistics, the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

ADMIN_KEY = "sk_bench_admin_key"
HOST = "127.0.0.1"
# WhatsApp number of the gateway's `wa` agent (bench.serve_gateway --graph-url) and its secrets,
# handed to the server process as environment variables.
WA_PNID = "106540352242922"
WA_TOKEN = "bench-graph-token"
WA_APP_SECRET = "bench-app-secret"
WA_ENV = {"WA_TOKEN": WA_TOKEN, "WA_APP_SECRET": WA_APP_SECRET}
SERVER_KINDS = ("gateway", "bare", "fake_llm", "fake_graph")
# Every server process still running (not reaped): its CPU counts as ours in LoadMonitor.
LIVE_PIDS: set[int] = set()
ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Profiling:
    """Opt-in (`python -m bench --profile DIR`): py-spy attached to every server process."""

    dir: Path | None = None
    exe: str = "py-spy"
    tag: str = "bench"
    rate: int = 200


def raise_nofile(want: int = 65_536) -> int:
    """Raise the soft file-descriptor limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop when it is installed (client and servers alike)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class ServerProc:
    """A server in its own process: `python -m bench.serve_<kind> --port N [args…]`.

    kind: gateway, bare (both get a fresh SQLite file as `--db`), fake_llm, fake_graph.
    """

    def __init__(
        self,
        kind: str,
        *,
        log_dir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        assert kind in SERVER_KINDS, kind
        self.kind = kind
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.background_cores = float("nan")
        argv = [sys.executable, "-m", f"bench.serve_{kind}", "--port", str(self.port), *args]
        self.db_path: Path | None = None
        if kind in ("gateway", "bare"):
            self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{kind}-")
            self.db_path = Path(self._tmp.name) / f"{kind}.db"
            argv += ["--db", str(self.db_path)]
        self.log_path = log_dir / f"{kind}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        LIVE_PIDS.add(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: see {self.log_path}")
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(request)
                head = await reader.read(64)
                writer.close()
                if head.startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.kind} server not ready after {timeout}s")

    def start_profile(self) -> None:
        if Profiling.dir is None:
            return
        Profiling.dir.mkdir(parents=True, exist_ok=True)
        self.profile_path = Profiling.dir / f"{Profiling.tag}-{self.kind}-{self.port}.txt"
        self._spy = subprocess.Popen(
            [
                Profiling.exe,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                str(Profiling.rate),
                "--nonblocking",
                "--output",
                str(self.profile_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def stop_profile(self) -> None:
        spy = getattr(self, "_spy", None)
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)

    def stop(self, timeout: float = 20) -> None:
        self.stop_profile()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.wait()
        LIVE_PIDS.discard(self.proc.pid)
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _system_busy_seconds() -> float:
    """CPU time spent busy by all cores since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _own_seconds() -> float:
    """CPU time of this process, its reaped children and its live server processes.

    A child's time moves from the live term to RUSAGE_CHILDREN when it is reaped
    (`ServerProc.stop` waits, then forgets the pid), so it is counted once at any
    instant, and servers nested in one another's measurement (a fake upstream next
    to the gateway) are not taken for background load.
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for pid in tuple(LIVE_PIDS):
        with contextlib.suppress(OSError, IndexError, ValueError):
            live += cpu_seconds(pid)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live


class LoadMonitor:
    """How many cores *other* processes on the machine used during a measurement.

    Busy time of the whole machine minus the time of this process tree (every child
    is reaped before `stop`). Anything well above 0 means someone else competed for
    the 2 cores and the numbers of that measurement are suspect.
    """

    def __init__(self) -> None:
        self.background_cores = float("nan")
        self._t0 = self._busy0 = self._own0 = 0.0

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.monotonic(), _system_busy_seconds(), _own_seconds()

    def stop(self) -> float:
        wall = time.monotonic() - self._t0
        other = (_system_busy_seconds() - self._busy0) - (_own_seconds() - self._own0)
        self.background_cores = max(0.0, other / wall) if wall > 0 else 0.0
        return self.background_cores


class Quiet:
    """Opt-in (`--wait-quiet SECONDS`): before each server starts, wait for an idle machine."""

    max_wait_s: float = 0.0
    threshold_cores: float = 0.25
    waited_s: float = 0.0


async def wait_for_quiet() -> None:
    """Sample the machine's busy cores in 0.5 s windows until one is below the threshold."""
    if Quiet.max_wait_s <= 0:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < Quiet.max_wait_s:
        monitor = LoadMonitor()
        monitor.start()
        await asyncio.sleep(0.5)
        if monitor.stop() < Quiet.threshold_cores:
            break
    Quiet.waited_s += time.monotonic() - t0


@contextlib.asynccontextmanager
async def running(  # type: ignore[no-untyped-def]
    kind: str, log_dir: Path, *, args: Sequence[str] = (), env: dict[str, str] | None = None
):
    """A server process for the duration; afterwards `server.background_cores` is set."""
    await wait_for_quiet()
    monitor = LoadMonitor()
    monitor.start()
    server = ServerProc(kind, log_dir=log_dir, args=args, env=env)
    try:
        await server.wait_ready()
        server.start_profile()
        yield server
    finally:
        server.stop()
        server.background_cores = monitor.stop()


async def mint_tokens(
    url: str, count: int, *, channel: str = "chat", agent: str = "demo", concurrency: int = 16
) -> list[str]:
    """Single-use browser tokens from POST /v1/tokens with the admin key."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, limits=limits, timeout=30
    ) as client:

        async def one() -> str:
            async with sem:
                r = await client.post("/v1/tokens", json={"agent": agent, "channel": channel})
                r.raise_for_status()
                return str(r.json()["token"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def gather_limited(coros: Sequence[Coroutine[Any, Any, Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Coroutine[Any, Any, Any]) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(run(c) for c in coros), return_exceptions=True))
