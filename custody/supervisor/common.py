"""Names, states and small formatters shared by the supervisor's modules and its tests."""

from __future__ import annotations

import signal
from enum import StrEnum
from pathlib import Path

from cc_common.config import Config
from cc_common.errors import CustodyError

STATE_FILENAME = "supervisor.json"
LOCK_FILENAME = "supervisor.lock"
EVENT_LOG_FILENAME = "supervisor.log"
SUPERVISOR_ENV = "CC_SUPERVISOR_PID"
SUPERVISED_ENV = "CC_SUPERVISED"  # "<supervisor pid>:<name>", inherited by helpers
TAIL_LINES = 25
POLL_INTERVAL = 0.05


class SupervisorError(CustodyError):
    """The supervisor cannot do what was asked (already running, a process failed to start)."""

    code = 620


class ProcState(StrEnum):
    """Life cycle of one supervised process."""

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Phase(StrEnum):
    """Life cycle of the supervisor as a whole, as seen by `custody status --wait`."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPING = "stopping"


def state_path(config: Config) -> Path:
    return config.run_dir / STATE_FILENAME


def lock_path(config: Config) -> Path:
    return config.run_dir / LOCK_FILENAME


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
