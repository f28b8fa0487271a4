"""One serving process per SQLite file.

SQLite is the single-process default: its event `seq`, its write queue and the
in-process bus are only right when one gateway serves the file. A second
`gateway serve` on the same file would run turns, timers and the outbox twice and
its feeds would miss the first one's events, so it is refused at start.

The owner holds an exclusive `flock` on `<database>.lock` beside the file for as
long as it serves; the operating system drops it when the process ends, however it
ends (a SIGKILL too), so a restart never finds a stale lock. The file holds the
owner's pid for the message. Commands that only read or administer (`sessions`,
`export`, `keys`, `migrate`) take no lock. Within one process the lock is shared
(embedding, tests restarting a server in place).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import GatewayError

# path → (open lock file, holders in this process)
_held: dict[Path, tuple[int, int]] = {}


class AlreadyServed(GatewayError):
    code = "database_in_use"


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def acquire(database_url: str) -> Path | None:
    """Own the SQLite file `database_url` names, or raise `AlreadyServed`. None: nothing to own."""
    from gateway.store.db import is_sqlite, sqlite_path  # SQLAlchemy only when serving

    if not is_sqlite(database_url):
        return None
    database = sqlite_path(database_url)
    if database is None or not database.parent.is_dir():
        return None  # in memory (nobody else can open it), or a wrong path the schema check names
    path = lock_path(database.resolve())
    held = _held.get(path)
    if held is not None:
        _held[path] = (held[0], held[1] + 1)
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyServed(
            f"another gateway process (pid {owner}) is serving {database}: SQLite serves one process. "
            'To run several instances use PostgreSQL (database_url) and Redis (bus_url = "redis://…"); '
            "see docs/operations.md, Running several instances"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[path] = (fd, 1)
    return path


def release(path: Path | None) -> None:
    if path is None or path not in _held:
        return
    fd, count = _held[path]
    if count > 1:
        _held[path] = (fd, count - 1)
        return
    del _held[path]
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor drops the flock


@contextlib.contextmanager
def owning(database_url: str) -> Iterator[None]:
    path = acquire(database_url)
    try:
        yield
    finally:
        release(path)
