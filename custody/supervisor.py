"""The process supervisor behind `custody up`, `custody status` and `custody down`.

Every process of a local deployment is one `ProcessSpec` in `DEFAULT_SPECS`, in dependency
order (simulated hardware first). A spec whose program does not exist yet (its sub-command is
not registered) is left out, so later issues add a process by adding one line.

How it works, and why:

- Each child runs in its own session (so its own process group): Ctrl-C in the terminal reaches
  only the supervisor, which then stops children in reverse order, and a whole group (socat,
  helpers) is signalled at once so nothing is orphaned.
- Readiness is the `run/<name>.ready` file of `cc_common.process`, polled with a deadline; a
  child that exits while we wait fails at once, with the tail of its output.
- A child that dies after it was ready is restarted with exponential backoff; after too many
  quick failures in a row the supervisor gives up on it and says so.
- `run/supervisor.json` holds the live state for `custody status`; `run/supervisor.lock` is an
  `flock` held for the supervisor's lifetime, so a second supervisor on the same data directory
  is refused and a crashed one never leaves a stale lock.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, TextIO

from cc_common.config import Config
from cc_common.errors import ConfigError, CustodyError
from cc_common.process import pid_alive, read_ready, ready_file

STATE_FILENAME = "supervisor.json"
LOCK_FILENAME = "supervisor.lock"
EVENT_LOG_FILENAME = "supervisor.log"
SUPERVISOR_ENV = "CC_SUPERVISOR_PID"
SUPERVISED_ENV = "CC_SUPERVISED"  # "<supervisor pid>:<name>", inherited by helpers
TAIL_LINES = 25
POLL_INTERVAL = 0.05


class SupervisorError(CustodyError):
    """The supervisor cannot do what was asked (already running, a process failed to start)."""

    code = 30


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


# --------------------------------------------------------------------------- process table


@cache
def _subcommands(module: str) -> tuple[frozenset[str], str | None]:
    """Sub-commands registered by `module.build_parser()`, or why they could not be read."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return frozenset(), "not built yet"
        return frozenset(), f"importing {module} failed: {exc!r}"
    except Exception as exc:  # a bug in another package must not crash the supervisor
        return frozenset(), f"importing {module} failed: {exc!r}"
    build = getattr(mod, "build_parser", None)
    if build is None:
        return frozenset(), f"{module} has no build_parser()"
    try:
        parser = build()
    except Exception as exc:
        return frozenset(), f"{module}.build_parser() failed: {exc!r}"
    for action in parser._actions:  # argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices), None
    return frozenset(), None


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process.

    `argv` may contain `{python}` (this interpreter) and `{dir}` (the data directory).
    `ready_name` is the name of its `run/<name>.ready` file. `after` names the processes that
    must be ready first; names of processes that are not available are ignored.
    `module`/`command` say where the program comes from: the spec is available when that
    module registers that sub-command (none given: always available).
    """

    name: str
    argv: tuple[str, ...]
    ready_name: str
    after: tuple[str, ...] = ()
    module: str | None = None
    command: str | None = None
    ready_timeout: float | None = None
    # One-shot, idempotent setup run before the first start (e.g. `hsm-cold init`); same
    # placeholders as `argv`. A non-zero exit fails the startup with its output shown.
    prepare: tuple[str, ...] = ()

    def unavailable_reason(self) -> str | None:
        """None when the program exists, else a short reason (for `custody up`'s notice)."""
        if self.module is None:
            return None
        commands, error = _subcommands(self.module)
        if error is not None:
            return error
        if self.command is not None and self.command not in commands:
            return "not built yet"
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def resolve_argv(self, data_dir: Path) -> list[str]:
        return _resolve(self.argv, data_dir)

    def resolve_prepare(self, data_dir: Path) -> list[str]:
        return _resolve(self.prepare, data_dir)


def _resolve(argv: Sequence[str], data_dir: Path) -> list[str]:
    return [a.replace("{python}", sys.executable).replace("{dir}", str(data_dir)) for a in argv]


def cli_spec(
    name: str,
    module: str,
    command: str,
    *,
    after: Sequence[str] = (),
    ready_name: str | None = None,
    prepare: Sequence[str] = (),
) -> ProcessSpec:
    """A process run as `python -m <module> <command> --dir <data dir>`.

    `prepare` names a sub-command of the same module run once before the first start
    (`python -m <module> <prepare...> --dir <data dir>`), e.g. `("init",)`.
    """
    return ProcessSpec(
        name=name,
        argv=("{python}", "-m", module, command, "--dir", "{dir}"),
        ready_name=ready_name or name,
        after=tuple(after),
        module=module,
        command=command,
        prepare=("{python}", "-m", module, *prepare, "--dir", "{dir}") if prepare else (),
    )


PREPARE_TIMEOUT = 180.0

# The local deployment, in dependency order. Add a process with one line here; it is started
# only once its module registers the sub-command.
DEFAULT_SPECS: tuple[ProcessSpec, ...] = (
    cli_spec("firmware-sim", "firmware_sim.cli", "serve"),
    cli_spec("node", "firmware_sim.cli", "node"),
    cli_spec("hsm-cold", "hsm_cold.cli", "serve", after=["firmware-sim"], prepare=["init"]),
    cli_spec(
        "hsm-hot", "hsm_hot.cli", "serve", after=["firmware-sim", "hsm-cold"], prepare=["init"]
    ),
    cli_spec(
        "custody-api", "custody.cli", "serve", after=["node", "hsm-hot"], prepare=["db", "upgrade"]
    ),
    cli_spec("custody-worker", "custody.cli", "worker", after=["custody-api"]),
    cli_spec("custody-operator", "custody.cli", "dashboard", after=["custody-api"]),
    cli_spec("merchant-site", "examples.merchant_site.cli", "serve", after=["custody-api"]),
    cli_spec("vdevice", "vdevice.cli", "run", after=["firmware-sim", "merchant-site"]),
)


@dataclass(frozen=True)
class Settings:
    """Timings of the supervisor; `[supervisor]` in the configuration overrides them."""

    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_quick_failures: int = 5
    quick_failure_window: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        if not config.has_section("supervisor"):
            return cls()
        s = config.section("supervisor")
        d = cls()
        return cls(
            ready_timeout=s.float("ready_timeout", d.ready_timeout),
            stop_timeout=s.float("stop_timeout", d.stop_timeout),
            backoff_initial=s.float("backoff_initial", d.backoff_initial),
            backoff_max=s.float("backoff_max", d.backoff_max),
            max_quick_failures=s.int("max_quick_failures", d.max_quick_failures),
            quick_failure_window=s.float("quick_failure_window", d.quick_failure_window),
        )


def _extra_specs(config: Config) -> list[ProcessSpec]:
    """Processes added by `[[supervisor.extra]]` tables (tests, local tools)."""
    if not config.has_section("supervisor") or not config.section("supervisor").has("extra"):
        return []
    specs = []
    for i, item in enumerate(config.section("supervisor").list("extra")):
        if not isinstance(item, Mapping) or "name" not in item or "argv" not in item:
            raise ConfigError(f"config: [[supervisor.extra]] #{i + 1} needs `name` and `argv`")
        argv = item["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"config: [[supervisor.extra]] {item['name']}: argv must be strings")
        timeout = item.get("ready_timeout")
        specs.append(
            ProcessSpec(
                name=str(item["name"]),
                argv=tuple(argv),
                ready_name=str(item.get("ready_name", item["name"])),
                after=tuple(str(a) for a in item.get("after", ())),
                ready_timeout=float(timeout) if timeout is not None else None,
            )
        )
    return specs


def order_specs(specs: Iterable[ProcessSpec]) -> list[ProcessSpec]:
    """Topological order that keeps the given order where dependencies allow it."""
    pending = list(specs)
    names = {s.name for s in pending}
    done: list[ProcessSpec] = []
    placed: set[str] = set()
    while pending:
        for spec in pending:
            if all(dep in placed or dep not in names for dep in spec.after):
                done.append(spec)
                placed.add(spec.name)
                pending.remove(spec)
                break
        else:
            cycle = ", ".join(s.name for s in pending)
            raise ConfigError(f"supervisor: dependency cycle among {cycle}")
    return done


@dataclass(frozen=True)
class Plan:
    """What `custody up` will run, and what it leaves out and why."""

    specs: list[ProcessSpec]
    skipped: list[tuple[str, str]]


def plan(config: Config, base: Sequence[ProcessSpec] = DEFAULT_SPECS) -> Plan:
    """The available processes of `base` plus configured extras, filtered by `only`."""
    specs: list[ProcessSpec] = []
    skipped: list[tuple[str, str]] = []
    for spec in list(base) + _extra_specs(config):
        reason = spec.unavailable_reason()
        if reason is None:
            specs.append(spec)
        else:
            skipped.append((spec.name, reason))
    only: list[str] = []
    if config.has_section("supervisor") and config.section("supervisor").has("only"):
        only = [str(n) for n in config.section("supervisor").list("only")]
    if only:
        unknown = set(only) - {s.name for s in specs} - {n for n, _ in skipped}
        if unknown:
            raise ConfigError(f"config: [supervisor] only names unknown processes: {unknown}")
        specs = [s for s in specs if s.name in only]
    return Plan(order_specs(specs), skipped)


# --------------------------------------------------------------------------- helpers


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


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _ancestors(pid: int) -> set[int]:
    """`pid` and its ancestors (so a scan never reports the shell or pytest that asked)."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def processes_referencing(text: str, exclude: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Live processes whose command line or environment contains `text` (e.g. a data dir).

    Every supervised child gets `CC_DATA_DIR` in its environment, and so do its own children,
    so this finds strays even when they changed their command line.
    """
    skip = _ancestors(os.getpid()) | set(exclude)
    needle = text.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append((int(entry.name), shown or "(no command line)"))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def orphans_of(data_dir: Path, supervisor_pid: int) -> list[int]:
    """Processes a previous supervisor of `data_dir` started (it died without stopping them)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        owner = env.get(SUPERVISOR_ENV)
        if env.get("CC_DATA_DIR") == str(data_dir) and owner and owner != str(supervisor_pid):
            found.append(int(entry.name))
    return found


def processes_with_env(key: str, value: str) -> list[tuple[int, str]]:
    """Live processes whose environment has `key=value` (descendants of one supervisor)."""
    entry_bytes = f"{key}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if entry_bytes in environ.split(b"\0"):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append((int(entry.name), shown or "(no command line)"))
    return found


def remove_dangling_links(directory: Path) -> list[Path]:
    """Remove symlinks whose target is gone (pty links of a killed simulator)."""
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_symlink() and not path.exists():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the lock


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


# --------------------------------------------------------------------------- supervision


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


# --------------------------------------------------------------------------- status


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


def _ready_pid(config: Config, ready_name: str) -> int | None:
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
            ready_pid = _ready_pid(config, p.get("ready_name", p["name"]))
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
                    ready=alive and ready_pid is not None,
                    restarts=int(p.get("restarts", 0)),
                )
            )
    known = {r.name for r in rows}
    for spec in specs if specs is not None else DEFAULT_SPECS:
        if spec.name in known:
            continue
        pid = _ready_pid(config, spec.ready_name)
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
    from cc_common.cli import render_table  # noqa: PLC0415 (keeps this module CLI-free)

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
