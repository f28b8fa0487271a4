"""SQLite is one process: a second `gateway serve` on the same file is refused (issue 14, item 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import sqlite_owner
from tests.conftest import free_port
from tests.test_process import GATEWAY, Proc, procs, write_config  # noqa: F401 (fixture)


async def test_a_second_process_on_the_same_sqlite_file_is_refused_until_the_first_dies(
    tmp_path: Path,
    procs: list[Proc],  # noqa: F811
) -> None:
    config = write_config(tmp_path, delay_ms=0)
    first = Proc(config, free_port(), "--migrate")
    procs.append(first)
    await first.ready()

    second = Proc(config, free_port())
    procs.append(second)
    assert await second.wait(30) == 2
    out = second.log.read_text()
    assert f"another gateway process (pid {first.p.pid}) is serving {tmp_path / 'gw.db'}" in out
    assert "SQLite serves one process" in out and "PostgreSQL" in out
    assert "Traceback" not in out

    first.kill()  # SIGKILL: the operating system drops the lock with the process
    third = Proc(config, free_port())
    procs.append(third)
    await third.ready()


def test_a_redis_bus_with_sqlite_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\ndatabase_url = "sqlite:///{tmp_path / "x.db"}"\nbus_url = "redis://127.0.0.1:6379/0"\n'
    )
    run = subprocess.run(
        [*GATEWAY, "--config", str(config), "serve"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "server.bus_url: Value error, a redis:// bus is for several gateway processes" in run.stderr
    assert "SQLite serves one" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.db").exists()


def test_the_lock_is_shared_within_a_process_and_exclusive_across(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
    first = sqlite_owner.acquire(url)
    again = sqlite_owner.acquire(url)  # a server restarted in place, the CLI and its lifespan
    assert first == again == tmp_path / "g.db.lock"
    holder = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    )
    sqlite_owner.release(again)
    busy = subprocess.run([sys.executable, "-c", holder, str(first)], capture_output=True, text=True)
    assert busy.returncode != 0 and "BlockingIOError" in busy.stderr  # still held once
    sqlite_owner.release(first)
    free = subprocess.run([sys.executable, "-c", holder, str(first)], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr
    assert sqlite_owner.acquire("sqlite+aiosqlite://") is None  # in memory: nothing to own
    with pytest.raises(sqlite_owner.AlreadyServed, match="SQLite serves one process"):
        with subprocess.Popen(
            [sys.executable, "-c", holder + ";print('held', flush=True);sys.stdin.read()", str(first)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as p:
            assert p.stdout is not None and p.stdout.readline() == "held\n"
            try:
                sqlite_owner.acquire(url)
            finally:
                p.communicate("")
