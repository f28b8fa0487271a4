"""The container image (deploy/Dockerfile), built and run with podman.

Run by hand, not by the suite: `.venv/bin/python -m pytest deploy/container_check.py`.
It needs podman and runc (`apt-get install podman runc debootstrap`), takes minutes,
and no container registry may be reachable (the suite's tests need only the services
the README names, so this check lives beside the Dockerfile it checks). So
the base image is made locally: a Debian bookworm root file system from
`debootstrap` (Debian's own packages) with python3 and python3-venv, passed to the
Dockerfile as BASE_IMAGE in place of python:3.12-slim. The Dockerfile's own steps
(build the wheel, install it, non-root user, /data, health check, entrypoint) run
unchanged. What the image runs is also tested in every suite run, from the wheel
(tests/test_install.py).

podman here: rootful, runc (crun refuses this machine's hybrid cgroups), explicit
ulimits (the sandbox cannot raise RLIMIT_NPROC), host networking.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/switchboard-test-base:bookworm"
IMAGE = "localhost/switchboard-gateway:test"
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]

pytestmark = [pytest.mark.timeout(900)]


def sh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def ensure_base_image(work: Path) -> None:
    if sh("podman", "image", "exists", BASE).returncode == 0:
        return
    rootfs = work / "rootfs"
    r = sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        "bookworm",
        str(rootfs),
        "http://deb.debian.org/debian",
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # This machine reaches PyPI through a proxy with its own CA: give the image the same
    # trust store the host uses (a normal build does not need this).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run(
        ["podman", "import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-", BASE],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tar.wait()
    assert r.returncode == 0, r.stderr


def test_the_image_builds_runs_as_non_root_and_serves(tmp_path: Path) -> None:
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is not installed (apt-get install podman runc debootstrap)"
    ensure_base_image(tmp_path)
    built = sh(
        *PODMAN,
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        *LIMITS,
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-f",
        str(ROOT / "deploy" / "Dockerfile"),
        "-t",
        IMAGE,
        str(ROOT),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    inspect = json.loads(sh("podman", "image", "inspect", IMAGE).stdout)[0]
    assert inspect["Config"]["User"] == "switchboard"
    assert inspect["Config"]["Entrypoint"] == ["gateway"] and inspect["Config"]["Cmd"] == ["serve"]
    assert inspect["Healthcheck"]["Test"] == ["CMD", "gateway", "health"]

    config = tmp_path / "gateway.toml"
    config.write_text('[agents.support]\nanswer = "echo"\nallowed_origins = ["http://127.0.0.1:*"]\n')
    port, name = free_port(), f"switchboard-test-{os.getpid()}"
    run = sh(
        *PODMAN,
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        *LIMITS,
        "-e",
        f"GATEWAY_PORT={port}",
        "-e",
        "GATEWAY_ADMIN_KEY=sk_admin_container_test_0123",
        "-v",
        f"{config}:/data/gateway.toml:ro",
        IMAGE,
    )
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 60
        while sh("podman", "healthcheck", "run", name).returncode != 0:
            assert time.monotonic() < deadline, sh("podman", "logs", name).stderr
            time.sleep(0.5)
        assert sh("podman", "exec", name, "id", "-un").stdout.strip() == "switchboard"
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/v1/tokens", json={"agent": "support"}, headers={"origin": base})
        assert r.status_code == 201, r.text
        token = r.json()["token"]

        async def chat() -> str:
            async with websockets.connect(f"ws://127.0.0.1:{port}/chat/ws?token={token}") as ws:
                await ws.recv()
                await ws.send(json.dumps({"event": "message", "text": "hi from podman"}))
                while (frame := json.loads(await ws.recv()))["event"] != "chat.done":
                    pass
                return str(frame["text"])

        import asyncio

        assert asyncio.run(chat()) == "hi from podman"
        logs = sh("podman", "logs", name)
        assert "config: gateway.toml (found in the working directory)" in logs.stderr + logs.stdout
    finally:
        sh("podman", "rm", "-f", "-v", "-t", "5", name)
