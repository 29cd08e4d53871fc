"""`custody status` and `custody down`: what runs, from the state file, ready files and /proc."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.cli import render_table
from cc_common.config import Config
from cc_common.process import pid_alive, read_ready
from custody.supervisor.common import (
    Phase,
    ProcState,
    SupervisorError,
    format_duration,
    lock_path,
    state_path,
)
from custody.supervisor.lock import lock_owner
from custody.supervisor.procfs import processes_referencing
from custody.supervisor.specs import DEFAULT_SPECS, ProcessSpec


@dataclass(frozen=True)
class StatusRow:
    name: str
    pid: int | None
    state: str
    uptime: float | None
    ready: bool
    restarts: int


@dataclass(frozen=True)
class Status:
    """What runs in a data directory, from the state file, the ready files and /proc."""

    data_dir: Path
    supervisor_pid: int | None
    phase: str | None
    rows: list[StatusRow]
    strays: list[tuple[int, str]]

    @property
    def running(self) -> bool:
        return self.supervisor_pid is not None or any(r.pid for r in self.rows)

    @property
    def all_ready(self) -> bool:
        return (
            self.supervisor_pid is not None
            and self.phase == Phase.RUNNING
            and all(r.ready and r.state == ProcState.READY for r in self.rows)
        )

    @property
    def failed(self) -> bool:
        return self.phase == Phase.FAILED or any(r.state == ProcState.FAILED for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "supervisor_pid": self.supervisor_pid,
            "phase": self.phase,
            "all_ready": self.all_ready,
            "processes": [r.__dict__ for r in self.rows],
            "strays": [{"pid": p, "cmdline": c} for p, c in self.strays],
        }


def ready_pid(config: Config, ready_name: str) -> int | None:
    info = read_ready(config.run_dir, ready_name)
    pid = info.get("pid") if info else None
    return pid if isinstance(pid, int) and pid_alive(pid) else None


def read_status(config: Config, specs: Sequence[ProcessSpec] | None = None) -> Status:
    """Collect the status; processes started by hand (with a live ready file) are shown too."""
    sup_pid = lock_owner(lock_path(config))
    rows: list[StatusRow] = []
    phase = None
    now = time.time()
    if sup_pid is not None:
        try:
            state = json.loads(state_path(config).read_text())
        except (OSError, ValueError):
            state = {}
        phase = state.get("phase")
        for p in state.get("processes", []):
            pid = p.get("pid")
            alive = isinstance(pid, int) and pid_alive(pid)
            ready_at = ready_pid(config, p.get("ready_name", p["name"]))
            state_name = p.get("state", "?")
            if state_name in (ProcState.STARTING, ProcState.READY) and not alive:
                state_name = "dead"
            started = p.get("started_at")
            rows.append(
                StatusRow(
                    name=p["name"],
                    pid=pid if alive else None,
                    state=state_name,
                    uptime=now - started if alive and started else None,
                    ready=alive and ready_at is not None,
                    restarts=int(p.get("restarts", 0)),
                )
            )
    known = {r.name for r in rows}
    for spec in specs if specs is not None else DEFAULT_SPECS:
        if spec.name in known:
            continue
        pid = ready_pid(config, spec.ready_name)
        if pid is not None:
            info = read_ready(config.run_dir, spec.ready_name) or {}
            since = info.get("since")
            rows.append(
                StatusRow(
                    name=spec.name,
                    pid=pid,
                    state="running (unsupervised)",
                    uptime=now - since if isinstance(since, int | float) else None,
                    ready=True,
                    restarts=0,
                )
            )
    strays: list[tuple[int, str]] = []
    if sup_pid is None:
        listed = {r.pid for r in rows if r.pid}
        strays = [
            (pid, cmd)
            for pid, cmd in processes_referencing(str(config.data_dir))
            if pid not in listed
        ]
    return Status(config.data_dir, sup_pid, phase, rows, strays)


def render_status(status: Status) -> str:
    lines = []
    if status.supervisor_pid is not None:
        lines.append(
            f"supervisor pid {status.supervisor_pid} on {status.data_dir}: {status.phase or '?'}"
        )
    elif not status.rows:
        lines.append(
            f"nothing runs in {status.data_dir} "
            f"(no supervisor; start one with `custody up --dir {status.data_dir}`)"
        )
    else:
        lines.append(f"no supervisor runs on {status.data_dir}")
    if status.rows:
        table_rows = [
            (
                r.name,
                r.pid or "-",
                r.state,
                format_duration(r.uptime) if r.uptime is not None else "-",
                "yes" if r.ready else "no",
                r.restarts,
            )
            for r in status.rows
        ]
        headers = ("NAME", "PID", "STATE", "UPTIME", "READY", "RESTARTS")
        lines.append(render_table(headers, table_rows))
    if status.supervisor_pid is None:
        if status.strays:
            lines.append("stray processes still referencing this data directory:")
            lines.extend(f"  {pid}  {cmd}" for pid, cmd in status.strays)
        else:
            lines.append("no stray process references this data directory")
    return "\n".join(lines)


def wait_status(
    config: Config,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Status, str]:
    """Poll until every process is ready. Returns the last status and `ready`, `failed`,
    `gone` (a supervisor was seen and went away) or `timeout`."""
    deadline = time.monotonic() + timeout
    seen = False
    while True:
        status = read_status(config)
        if status.supervisor_pid is not None:
            seen = True
            if status.all_ready:
                return status, "ready"
            if status.failed:
                return status, "failed"
        elif seen:
            return status, "gone"
        if time.monotonic() >= deadline:
            return status, "timeout"
        sleep(0.1)


def stop_supervisor(config: Config, timeout: float) -> int | None:
    """SIGTERM the running supervisor and wait until it released its lock; its pid or None."""
    pid = lock_owner(lock_path(config))
    if pid is None:
        return None
    if pid <= 0:
        raise SupervisorError("a supervisor holds the lock but its pid is unknown")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while lock_owner(lock_path(config)) is not None:
        if time.monotonic() >= deadline:
            raise SupervisorError(f"supervisor pid {pid} still runs {timeout:.0f}s after SIGTERM")
        time.sleep(0.1)
    return pid
