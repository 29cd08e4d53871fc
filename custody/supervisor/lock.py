"""The supervisor's lock: one supervisor per data directory, and no stale lock after a crash.

`run/supervisor.lock` is an `flock` held for the supervisor's lifetime; the kernel drops it when
the process dies, so a crashed supervisor never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from custody.supervisor.common import SupervisorError


class PidLock:
    """An exclusive `flock` on `run/supervisor.lock`, holding the owner's pid as text."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = lock_owner(self.path)
            data_dir = self.path.parent.parent
            raise SupervisorError(
                f"a supervisor already runs on {data_dir} (pid {owner}); "
                f"`custody status --dir {data_dir}` shows it, `custody down --dir {data_dir}` "
                "stops it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def lock_owner(path: Path) -> int | None:
    """The pid of the supervisor holding the lock, or None when no supervisor runs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
