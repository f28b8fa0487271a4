"""The wheel, installed as a user installs it: a fresh venv outside the checkout.

Needs the package index (PyPI) for the build backend and the dependencies; pip's
cache makes repeated runs quick (about 30 s here). Everything the gateway does in
this test stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _env() -> dict[str, str]:
    """A user's environment: nothing that points back at the checkout or its settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GATEWAY_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the wheel from this checkout and install it into a fresh venv; yields its bin/."""
    base = tmp_path_factory.mktemp("wheel")
    dist, venv, src = base / "dist", base / "venv", base / "src"
    # From the files git would ship (tracked, or new and not ignored), as CI's clean clone
    # has them: a stale build/ or egg-info in the checkout must not leak into the wheel.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
        check=True,
        env=_env(),
        cwd=base,
        timeout=300,
    )
    wheels = list(dist.glob("switchboard_gateway-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
        check=True,
        env=_env(),
        cwd=base,
        timeout=480,
    )
    yield venv / "bin"


def start(*argv: str | Path, cwd: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        env={**_env(), "PYTHONUNBUFFERED": "1", **env},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


def test_the_wheel_ships_its_migrations_and_license(installed: Path) -> None:
    r = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import gateway, pathlib, importlib.metadata as m; "
            "p = pathlib.Path(gateway.__file__).parent; "
            "print(len(list((p / 'migrations' / 'versions').glob('*.py'))), "
            "(p / 'static' / 'index.html').is_file(), "
            "m.metadata('switchboard-gateway')['License-Expression'])",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env=_env(),
        check=True,
    )
    count, static, license_ = r.stdout.split()
    assert int(count) >= 3 and static == "True" and license_ == "MIT"
    # The installed code is the wheel's, not the checkout's.
    where = subprocess.run(
        [str(installed / "python"), "-c", "import gateway; print(gateway.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        env=_env(),
        check=True,
    ).stdout
    assert str(ROOT) not in where and "site-packages" in where


def test_gateway_migrate_works_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [str(installed / "gateway"), "migrate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gateway.db").is_file()
    assert "database at head" in r.stdout


async def test_gateway_serve_in_an_empty_directory_serves_the_demo_and_chats(
    installed: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path.parent / "serve.log"
    proc = start(installed / "gateway", "serve", "--port", str(port), cwd=tmp_path, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            async with asyncio.timeout(30):
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        if (await c.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            page = await c.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert (await c.get("/static/demo.js")).status_code == 200
            # The page's way to a chat: a token through an allowed origin, no key.
            r = await c.post("/v1/tokens", json={"agent": "demo"}, headers={"origin": base})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
        async with websockets.connect(f"ws://127.0.0.1:{port}/chat/ws?token={token}") as ws:
            assert json.loads(await ws.recv())["event"] == "chat.started"
            await ws.send(json.dumps({"event": "message", "text": "hello from a wheel"}))
            async with asyncio.timeout(10):
                while (frame := json.loads(await ws.recv()))["event"] != "chat.done":
                    pass
            assert frame["text"] == "hello from a wheel"
    finally:
        proc.terminate()
        proc.wait(20)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert (tmp_path / "gateway.db").is_file()
    assert "Traceback" not in out


async def test_what_the_container_runs_works_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """deploy/Dockerfile's ENTRYPOINT and HEALTHCHECK, as it sets them up, without a container:
    all interfaces, the database in a data directory, a gateway.toml in the working directory."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(
        '[agents.support]\nanswer = "echo"\nallowed_origins = ["http://127.0.0.1:*"]\n'
    )
    port = free_port()
    env = {
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATABASE_URL": f"sqlite:///{data}/gateway.db",
        "GATEWAY_ADMIN_KEY": "sk_admin_image_test_0123456",
    }
    health = [str(installed / "gateway"), "health"]

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            health, cwd=data, env={**_env(), **env}, capture_output=True, text=True, timeout=30
        )

    assert probe().returncode == 1  # nothing listens yet
    log = tmp_path / "serve.log"
    proc = start(installed / "gateway", "serve", cwd=data, log=log, **env)
    try:
        async with asyncio.timeout(30):
            while (r := await asyncio.to_thread(probe)).returncode != 0:
                assert proc.poll() is None, log.read_text()
                await asyncio.sleep(0.2)
        assert r.stdout == f"http://127.0.0.1:{port}/readyz: 200\n"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            page = await c.get("/")
            assert 'data-agent="support"' in page.text
    finally:
        proc.terminate()
        proc.wait(20)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "config: gateway.toml (found in the working directory)" in out
    assert f"database: sqlite+aiosqlite:///{data}/gateway.db" in out
    assert (await asyncio.to_thread(probe)).returncode == 1
