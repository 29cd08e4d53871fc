"""The run loop behind `custody up`: start in order, wait for readiness, restart, stop.

How it works, and why:

- Each child runs in its own session (so its own process group): Ctrl-C in the terminal reaches
  only the supervisor, which then stops children in reverse order, and a whole group (socat,
  helpers) is signalled at once so nothing is orphaned.
- Readiness is the `run/<name>.ready` file of `cc_common.process`, polled with a deadline; a
  child that exits while we wait fails at once, with the tail of its output.
- A child that dies after it was ready is restarted with exponential backoff; after too many
  quick failures in a row the supervisor gives up on it and says so.
- `run/supervisor.json` holds the live state for `custody status`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cc_common.config import Config
from cc_common.process import pid_alive, read_ready, ready_file
from custody.supervisor.common import (
    EVENT_LOG_FILENAME,
    POLL_INTERVAL,
    SUPERVISED_ENV,
    SUPERVISOR_ENV,
    TAIL_LINES,
    Phase,
    ProcState,
    SupervisorError,
    describe_exit,
    format_duration,
    lock_path,
    state_path,
)
from custody.supervisor.lock import PidLock
from custody.supervisor.procfs import (
    group_alive,
    orphans_of,
    processes_with_env,
    remove_dangling_links,
    signal_group,
)
from custody.supervisor.specs import PREPARE_TIMEOUT, ProcessSpec, Settings


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass
class Managed:
    """Run-time state of one supervised process."""

    spec: ProcessSpec
    argv: list[str]
    state: ProcState = ProcState.PENDING
    proc: subprocess.Popen[bytes] | None = None
    started_at: float | None = None  # wall clock, for status
    started_mono: float = 0.0
    ready_at: float | None = None
    ready_deadline: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    next_start: float = 0.0
    last_exit: int | None = None
    pids: list[int] = field(default_factory=list)
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    reader: threading.Thread | None = None
    prepared: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "ready_name": self.spec.ready_name,
            "pid": self.pid if self.state not in (ProcState.STOPPED, ProcState.FAILED) else None,
            "state": str(self.state),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "pids": self.pids,
            "argv": self.argv,
        }


class Supervisor:
    """Starts, watches, restarts and stops the processes of one data directory."""

    def __init__(
        self,
        config: Config,
        specs: Sequence[ProcessSpec],
        settings: Settings | None = None,
        *,
        out: TextIO | None = None,
        quiet: bool = False,
    ) -> None:
        self.config = config
        self.settings = settings or Settings()
        self.out = out or sys.stdout
        self.quiet = quiet
        self.procs = [Managed(spec, spec.resolve_argv(config.data_dir)) for spec in specs]
        self.phase = Phase.STARTING
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self._out_lock = threading.Lock()
        self._event_log: TextIO | None = None
        self._lock = PidLock(lock_path(config))
        self._stop_signal: str | None = None

    # -- output

    def _emit(self, line: str) -> None:
        with self._out_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not stop the supervision

    def say(self, message: str) -> None:
        """A supervisor event: to the terminal and to `logs/supervisor.log`."""
        self._emit(f"[supervisor] {message}")
        if self._event_log is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with contextlib.suppress(OSError, ValueError):
                self._event_log.write(f"{stamp} {message}\n")
                self._event_log.flush()

    def _say_tail(self, m: Managed) -> None:
        if not m.tail:
            self.say(f"{m.spec.name}: (no output)")
            return
        self.say(f"{m.spec.name}: last {len(m.tail)} lines of its output:")
        for line in list(m.tail):
            self._emit(f"    {line}")

    def _pump(self, m: Managed, stream: Any) -> None:
        """Copy one child's output to ours with a `[name]` prefix, keeping a tail."""
        prefix = f"[{m.spec.name}] "
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            m.tail.append(line)
            if not self.quiet:
                self._emit(prefix + line)
        stream.close()

    # -- state file

    def write_state(self) -> None:
        data = {
            "pid": os.getpid(),
            "data_dir": str(self.config.data_dir),
            "phase": str(self.phase),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "processes": [m.to_json() for m in self.procs],
        }
        with contextlib.suppress(OSError):
            _write_json_atomic(state_path(self.config), data)

    def _set(self, m: Managed, state: ProcState) -> None:
        m.state = state
        self.write_state()

    # -- one process

    def _clear_stale_ready(self, m: Managed, *, initial: bool) -> None:
        info = read_ready(self.config.run_dir, m.spec.ready_name)
        if info is None:
            return
        pid = info.get("pid")
        if initial and isinstance(pid, int) and pid_alive(pid):
            raise SupervisorError(
                f"{m.spec.name} already runs outside this supervisor (pid {pid}, "
                f"{ready_file(self.config.run_dir, m.spec.ready_name)}); stop it first"
            )
        ready_file(self.config.run_dir, m.spec.ready_name).unlink(missing_ok=True)

    def _spawn(self, m: Managed) -> None:
        env = dict(os.environ)
        env.update(
            {
                "CC_DATA_DIR": str(self.config.data_dir),
                SUPERVISOR_ENV: str(os.getpid()),
                SUPERVISED_ENV: self._marker(m),
                "PYTHONUNBUFFERED": "1",
            }
        )
        m.tail.clear()
        if m.spec.prepare and not m.prepared:
            self._prepare(m, env)
        try:
            m.proc = subprocess.Popen(
                m.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.config.data_dir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            m.proc = None
            m.tail.append(f"cannot execute {m.argv[0]}: {exc}")
            raise
        m.pids.append(m.proc.pid)
        m.started_at = time.time()
        m.started_mono = time.monotonic()
        m.ready_at = None
        timeout = m.spec.ready_timeout or self.settings.ready_timeout
        m.ready_deadline = m.started_mono + timeout
        m.reader = threading.Thread(
            target=self._pump, args=(m, m.proc.stdout), name=f"pump-{m.spec.name}", daemon=True
        )
        m.reader.start()
        self._set(m, ProcState.STARTING)
        self.say(f"{m.spec.name}: starting (pid {m.proc.pid})")

    def _prepare(self, m: Managed, env: dict[str, str]) -> None:
        """Run the spec's one-shot setup (idempotent: `init`, `db upgrade`) before first start."""
        argv = m.spec.resolve_prepare(self.config.data_dir)
        self.say(f"{m.spec.name}: preparing ({' '.join(argv[2:-2])})")
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.config.data_dir,
                env=env,
                timeout=PREPARE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SupervisorError(
                f"{m.spec.name}: preparation took more than {PREPARE_TIMEOUT:.0f}s"
            ) from None
        if done.returncode != 0:
            for line in (done.stdout + done.stderr).splitlines()[-TAIL_LINES:]:
                m.tail.append(line)
            self._say_tail(m)
            raise SupervisorError(f"{m.spec.name}: preparation failed (exit {done.returncode})")
        m.prepared = True

    def _is_ready(self, m: Managed) -> bool:
        info = read_ready(self.config.run_dir, m.spec.ready_name)
        if info is None or m.proc is None:
            return False
        pid = info.get("pid")
        if pid == m.proc.pid:
            return True
        try:  # a wrapper that forks: accept any member of the child's process group
            return isinstance(pid, int) and os.getpgid(pid) == m.proc.pid
        except OSError:
            return False

    def _marker(self, m: Managed) -> str:
        return f"{os.getpid()}:{m.spec.name}"

    def _kill_strays(self, m: Managed) -> None:
        """Kill helpers of `m` that left its process group (they still carry its marker)."""
        for pid, cmd in processes_with_env(SUPERVISED_ENV, self._marker(m)):
            self.say(f"{m.spec.name}: killing stray process {pid}: {cmd}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _reap_group(self, m: Managed) -> None:
        """After the leader exited: kill whatever is left of its group and its strays."""
        if m.proc is None:
            return
        if group_alive(m.proc.pid):
            signal_group(m.proc.pid, signal.SIGKILL)
        self._kill_strays(m)
        if m.reader is not None:
            m.reader.join(timeout=0.5)  # the pump ends by itself once the pipe closes

    def _on_exit(self, m: Managed, code: int) -> None:
        """A child exited on its own: fail the startup, restart it, or give up."""
        name = m.spec.name
        m.last_exit = code
        uptime = time.monotonic() - m.started_mono
        was_ready = m.state == ProcState.READY
        self._reap_group(m)
        with contextlib.suppress(OSError):
            self._clear_stale_ready(m, initial=False)
        if not was_ready and self.phase == Phase.STARTING:
            self.say(f"{name}: failed: {describe_exit(code)} before it was ready")
            self._say_tail(m)
            self._set(m, ProcState.FAILED)
            self.phase = Phase.FAILED
            return
        if uptime >= self.settings.quick_failure_window:
            m.quick_failures = 0
        m.quick_failures += 1
        if m.quick_failures > self.settings.max_quick_failures:
            self.say(
                f"{name}: exited ({describe_exit(code)}) after {format_duration(uptime)}; "
                f"giving up after {m.quick_failures - 1} quick restarts"
            )
            self._say_tail(m)
            self._set(m, ProcState.FAILED)
            return
        delay = min(
            self.settings.backoff_initial * 2 ** (m.quick_failures - 1), self.settings.backoff_max
        )
        m.next_start = time.monotonic() + delay
        self.say(
            f"{name}: exited ({describe_exit(code)}) after {format_duration(uptime)}; "
            f"restarting in {delay:.1f}s (restart {m.restarts + 1})"
        )
        if not was_ready:
            self._say_tail(m)
        self._set(m, ProcState.RESTARTING)

    def _check(self, m: Managed, now: float) -> None:
        if m.state == ProcState.RESTARTING and now >= m.next_start:
            m.restarts += 1
            try:
                self._spawn(m)
            except OSError as exc:
                self.say(f"{m.spec.name}: cannot start: {exc}")
                self._set(m, ProcState.FAILED)
            return
        if m.state not in (ProcState.STARTING, ProcState.READY) or m.proc is None:
            return
        code = m.proc.poll()
        if code is not None:
            self._on_exit(m, code)
            return
        if m.state == ProcState.STARTING:
            if self._is_ready(m):
                m.ready_at = time.time()
                elapsed = now - m.started_mono
                self._set(m, ProcState.READY)
                self.say(f"{m.spec.name}: ready in {elapsed:.1f}s (pid {m.proc.pid})")
            elif now >= m.ready_deadline:
                timeout = m.spec.ready_timeout or self.settings.ready_timeout
                self.say(f"{m.spec.name}: not ready after {timeout:.0f}s; stopping it")
                self._terminate(m)
                code = m.proc.returncode if m.proc.returncode is not None else -signal.SIGKILL
                self._on_exit(m, code)

    def _terminate(self, m: Managed) -> None:
        """SIGTERM the child's group, wait with a deadline, then SIGKILL it."""
        if m.proc is None:
            return
        pgid = m.proc.pid
        if m.proc.poll() is None:
            signal_group(pgid, signal.SIGTERM)
            try:
                m.proc.wait(timeout=self.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                self.say(
                    f"{m.spec.name}: still running {self.settings.stop_timeout:.0f}s after "
                    "SIGTERM; sending SIGKILL"
                )
                signal_group(pgid, signal.SIGKILL)
                m.proc.wait()
        else:
            signal_group(pgid, signal.SIGTERM)
        # Helpers of the child (same group) get a short grace period, then SIGKILL.
        deadline = time.monotonic() + min(2.0, self.settings.stop_timeout)
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        if group_alive(pgid):
            self.say(f"{m.spec.name}: killing leftover processes of its group")
            signal_group(pgid, signal.SIGKILL)
        self._kill_strays(m)
        if m.reader is not None:
            m.reader.join(timeout=0.5)

    # -- the whole deployment

    def _handle_signal(self, signum: int, frame: object) -> None:
        del frame
        self._stop_signal = signal.Signals(signum).name
        self.stop_event.set()

    def _stop_orphans(self) -> None:
        """Stop what a previous supervisor of this data directory left running (it was
        killed with SIGKILL, say): we hold the lock, so it is dead and they are orphans."""
        orphans = orphans_of(self.config.data_dir, os.getpid())
        if not orphans:
            return
        self.say(f"stopping {len(orphans)} process(es) left by a previous supervisor: {orphans}")
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout
        while any(pid_alive(p) for p in orphans) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        for pid in orphans:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _startup_step(self) -> None:
        """Start the next pending process once every earlier one is ready."""
        if any(m.state == ProcState.STARTING for m in self.procs):
            return
        for m in self.procs:
            if m.state == ProcState.PENDING:
                self._clear_stale_ready(m, initial=True)
                self._spawn(m)
                return
        if all(m.state == ProcState.READY for m in self.procs):
            self.phase = Phase.RUNNING
            self.write_state()
            names = ", ".join(m.spec.name for m in self.procs) or "nothing"
            self.say(f"all {len(self.procs)} processes ready ({names}); Ctrl-C stops them")

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM/SIGHUP; 0 after a clean stop, 1 if startup failed."""
        self._lock.acquire()
        old_handlers = {
            sig: signal.signal(sig, self._handle_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self._event_log = open(  # noqa: SIM115 (lives as long as the supervisor)
            self.config.log_dir / EVENT_LOG_FILENAME, "a", encoding="utf-8"
        )
        status = 0
        try:
            self.say(f"supervisor pid {os.getpid()} on {self.config.data_dir}")
            self._stop_orphans()
            self.write_state()
            while not self.stop_event.is_set():
                now = time.monotonic()
                for m in self.procs:
                    self._check(m, now)
                if self.phase == Phase.FAILED:
                    self.say("startup failed; stopping what was started")
                    status = 1
                    break
                if self.phase == Phase.STARTING:
                    try:
                        self._startup_step()
                    except (SupervisorError, OSError) as exc:
                        self.say(f"startup failed: {exc}")
                        self.phase = Phase.FAILED
                        status = 1
                        break
                self.stop_event.wait(POLL_INTERVAL)
            if self._stop_signal:
                self.say(f"{self._stop_signal} received; stopping")
        finally:
            self.shutdown()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return status

    def shutdown(self) -> None:
        """Stop every process in reverse order and remove what the run left behind."""
        if self.phase != Phase.FAILED:
            self.phase = Phase.STOPPING
        self.write_state()
        # Signals during shutdown must not interrupt it half-way.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):
                signal.signal(sig, signal.SIG_IGN)
        for m in reversed(self.procs):
            if m.proc is None or m.state in (ProcState.PENDING, ProcState.STOPPED):
                continue
            if m.proc.poll() is None:
                self._set(m, ProcState.STOPPING)
                self.say(f"{m.spec.name}: stopping (pid {m.proc.pid})")
                self._terminate(m)
                self.say(f"{m.spec.name}: stopped ({describe_exit(m.proc.returncode)})")
            else:
                self._reap_group(m)
            if m.state != ProcState.FAILED:
                m.state = ProcState.STOPPED
            with contextlib.suppress(OSError, SupervisorError):
                self._clear_stale_ready(m, initial=False)
        for path in remove_dangling_links(self.config.dev_dir):
            self.say(f"removed stale link {path}")
        # Anything else started under this supervisor still carries its pid in the environment.
        for pid, cmd in processes_with_env(SUPERVISOR_ENV, str(os.getpid())):
            self.say(f"killing stray process {pid}: {cmd}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        state_path(self.config).unlink(missing_ok=True)
        self.say("all processes stopped")
        if self._event_log is not None:
            self._event_log.close()
            self._event_log = None
        self._lock.release()
