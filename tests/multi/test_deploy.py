"""deploy/: the compose file's shape, and deploy/nginx.conf run for real in front of two
gateway processes (no Docker here: nginx and the gateways run as plain processes)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import yaml

from channels.whatsapp.signature import sign
from tests.conftest import SseReader, free_port
from tests.fakes.graph_server import FakeGraph
from tests.multi.cluster import Cluster, Endpoint, Node
from tests.multi.test_cluster import chat
from tests.services import need_nginx
from tests.whatsapp.test_channel import ENV, SECRET, number, text_webhook

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_runs_two_gateways_on_postgres_and_redis_behind_nginx() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-1", "gateway-2", "migrate", "postgres", "redis", "nginx"} <= set(services)
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        env = gw["environment"]
        assert env["GATEWAY_DATABASE_URL"].startswith("postgresql://")
        assert env["GATEWAY_BUS_URL"] == "redis://redis:6379/0"
        assert gw["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "ports" not in gw  # reached through nginx only
    assert services["migrate"]["command"] == ["migrate"]
    assert services["nginx"]["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    upstreams = re.findall(r"server (gateway-\d):8080", (DEPLOY / "nginx.conf").read_text())
    assert upstreams == ["gateway-1", "gateway-2", "gateway-1", "gateway-2"]


def start_nginx(tmp: Path, nodes: list[Node], port: int) -> subprocess.Popen[bytes]:
    """deploy/nginx.conf with the compose names pointed at these processes; `nginx -t` first."""
    binary = need_nginx()
    conf = (DEPLOY / "nginx.conf").read_text()
    for i, node in enumerate(nodes, 1):  # every upstream naming it
        conf = conf.replace(f"gateway-{i}:8080", f"127.0.0.1:{node.port}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    path = tmp / "nginx.conf"
    path.write_text(conf)
    (tmp / "logs").mkdir(exist_ok=True)
    globals_ = f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;"
    args = [binary, "-c", str(path), "-p", str(tmp), "-g", globals_]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def nginx(tmp: Path, nodes: list[Node]) -> AsyncIterator[Endpoint]:
    port = free_port()
    proc = start_nginx(tmp, nodes, port)
    try:
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(10), httpx.AsyncClient() as c:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get(f"{url}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield Endpoint(url)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def post_webhook(front: Endpoint, body: bytes) -> int:
    headers = {"content-type": "application/json", "x-hub-signature-256": sign(body, SECRET)}
    async with httpx.AsyncClient(base_url=front.url, timeout=10) as c:
        return (await c.post("/whatsapp/webhook", content=body, headers=headers)).status_code


async def test_nginx_passes_websockets_and_sse_and_rides_a_rolling_restart(tmp_path: Path) -> None:
    async with FakeGraph(token="test-token") as graph:
        agents = {
            "demo": {"answer": "echo", "echo_delay_ms": 0},
            "support": {"answer": "echo", "echo_delay_ms": 0, "whatsapp": [number(graph)]},
        }
        async with Cluster(tmp_path, n=2, agents=agents, env=ENV) as cluster:
            first, second = cluster.nodes
            async with nginx(tmp_path, cluster.nodes) as front:
                async with front.client() as client, client.stream("GET", "/v1/events?tokens=true") as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    feed = SseReader(r)
                    await feed.next()  # ": connected" at once: nothing buffers the stream
                    sid = await chat(front, ["through the proxy"])  # a WebSocket through nginx
                    kinds = []
                    while (f := await feed.next_event(10))["event"] != "bot.message":
                        kinds.append(f["event"])
                    assert f["json"]["sessionId"] == sid and "bot.token" in kinds
                    assert await post_webhook(front, text_webhook("wamid.NGINX1", "first")) == 200
                    async with asyncio.timeout(20):  # answered before the restart begins
                        while not graph.sent:
                            await asyncio.sleep(0.05)

                    # Rolling restart: stop gateway-1 (SIGTERM), keep talking, bring it back.
                    assert first.stop() == 0
                    for i in range(4):
                        async with front.client() as c2:
                            assert (await c2.get("/readyz")).status_code == 200
                        await chat(front, [f"while one is down {i}"])
                    body = text_webhook("wamid.NGINX2", "while gateway-1 restarts", sender="16505550009")
                    assert await post_webhook(front, body) == 200  # the other gateway took it
                    await first.start()
                    await second.ready()
                    await chat(front, ["both back"])
                    assert await post_webhook(front, text_webhook("wamid.NGINX3", "third")) == 200

                async with asyncio.timeout(20):
                    while len(graph.sent) < 3:
                        await asyncio.sleep(0.1)
        bodies = sorted(m["text"]["body"] for m in graph.sent)
        assert bodies == ["first", "third", "while gateway-1 restarts"]
