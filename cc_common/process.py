"""Process plumbing shared by every serve command: readiness files and clean shutdown.

A process is *ready* when it has written `run/<name>.ready` (JSON with its pid). The
supervisor and the test harness poll for that file with a deadline and check that the pid is
the child they started; the process removes the file when it exits. This works the same for
processes with no network socket at all (the air-gapped cold HSM).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ready_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.ready"


def mark_ready(run_dir: Path, name: str, **info: Any) -> Path:
    """Announce that process `name` is ready to serve (atomic write)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = ready_file(run_dir, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "since": time.time(), **info}))
    os.replace(tmp, path)
    return path


def clear_ready(run_dir: Path, name: str) -> None:
    path = ready_file(run_dir, name)
    try:
        data = json.loads(path.read_text())
        if data.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read_ready(run_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(ready_file(run_dir, name).read_text())
        return info
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install_stop_handlers(on_stop: Callable[[], None] | None = None) -> threading.Event:
    """Turn SIGTERM and SIGINT into an event the serve loop waits on."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()
        if on_stop is not None:
            on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
