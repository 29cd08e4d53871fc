"""A process harness for integration tests, in the spirit of Bitcoin Core's `TestNode`.

Real processes, started in their own process group with a per-test data directory made by
`custody init` (so ports are free ones picked at init time, and secrets are fresh). Readiness
is the `run/<name>.ready` file, polled with a deadline; a process that exits while we wait fails
the test at once with the tail of its output. `stop()` sends SIGTERM, waits with a deadline,
checks the exit status and that stderr holds no traceback, then checks that no process still
references the data directory.

    def test_something(deployment):
        d = deployment()                                   # fresh data dir, config written
        d.configure({"firmware_sim": {"carrier": {"loss": 0.5}}})
        sim = d.start_cli("firmware-sim", "firmware_sim.cli", "serve")
        wait_until(lambda: some_check(), timeout=5, what="the modem answers")

Output of every process goes to `<data>/logs/<name>.stdout` and `.stderr`; the `deployment`
fixture keeps the data directory and prints the log tails when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cc_common.config import ALL_ROLES, Config, load_config
from cc_common.config_write import write_settings
from cc_common.deployment import init_deployment
from cc_common.poll import poll_until
from cc_common.process import read_ready
from custody import supervisor as sv

T = TypeVar("T")

DEFAULT_READY_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 15.0
POLL = 0.05


class ProcessDied(AssertionError):
    """A process under test exited when it should have been running."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = POLL,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout`."""
    return poll_until(predicate, timeout, what, interval=interval, error=AssertionError)


def in_threads(work: Callable[[int], object], n: int, timeout: float = 60.0) -> None:
    """`work(0)` .. `work(n - 1)`, each in its own thread, all at once; fails with what any of
    them raised."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class TestProcess:
    """One process under test, in its own process group."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        deployment: Deployment,
        name: str,
        argv: Sequence[str],
        ready_name: str | None = None,
        expected_returncodes: Iterable[int] = (0,),
    ) -> None:
        self.deployment = deployment
        self.name = name
        self.argv = [str(a) for a in argv]
        self.ready_name = ready_name
        self.expected_returncodes = set(expected_returncodes)
        self.proc: subprocess.Popen[bytes] | None = None
        logs = deployment.data_dir / "logs"
        self.stdout_path = logs / f"{name}.stdout"
        self.stderr_path = logs / f"{name}.stderr"

    # -- life cycle

    def start(self) -> TestProcess:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.deployment.env,
                cwd=self.deployment.data_dir,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_running(self) -> None:
        """Fail with the process's output if it has exited."""
        if self.proc is None:
            raise ProcessDied(f"{self.name} was never started")
        code = self.proc.poll()
        if code is not None:
            raise ProcessDied(
                f"{self.name} exited ({sv.describe_exit(code)}); argv {self.argv}\n"
                f"--- stderr ({self.stderr_path}):\n{tail(self.stderr_path)}\n"
                f"--- stdout ({self.stdout_path}):\n{tail(self.stdout_path)}"
            )

    def is_ready(self) -> bool:
        """The ready file names this process (or a member of its process group)."""
        assert self.ready_name is not None, f"{self.name} has no ready file"
        info = read_ready(self.deployment.run_dir, self.ready_name)
        if not info or self.proc is None:
            return False
        pid = info.get("pid")
        if pid == self.proc.pid:
            return True
        try:
            return isinstance(pid, int) and os.getpgid(pid) == self.proc.pid
        except OSError:
            return False

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> TestProcess:
        """Poll the ready file; fail fast if the process dies, fail at the deadline."""

        def check() -> bool:
            self.assert_running()
            return self.is_ready()

        wait_until(check, timeout, f"{self.name} to be ready ({self.ready_name}.ready)")
        return self

    def wait_for_output(self, text: str, timeout: float = 10.0, *, stderr: bool = False) -> str:
        """Poll this process's stdout (or stderr) until it contains `text`."""
        path = self.stderr_path if stderr else self.stdout_path

        def check() -> str:
            content = path.read_text(errors="replace") if path.exists() else ""
            if text in content:
                return content
            self.assert_running()
            return ""

        return wait_until(check, timeout, f"{text!r} in {path.name}")

    def signal(self, sig: int) -> None:
        """Send `sig` to the process only (not its group)."""
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """Wait for the exit and return its status; the caller checks it, so `stop()` won't."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs {timeout:.0f}s later") from None
        self.expected_returncodes.add(code)
        return code

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT, *, check: bool = True) -> list[str]:
        """SIGTERM the group, wait, SIGKILL on timeout; return the problems found.

        With `check`, an unexpected exit status or a traceback on stderr is a problem, as is
        having to use SIGKILL.
        """
        problems: list[str] = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            sv.signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name} did not stop within {timeout:.0f}s of SIGTERM")
                sv.signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not sv.group_alive(self.pid), 5.0, "the process group to exit")
        if sv.group_alive(self.pid):
            problems.append(f"{self.name}: processes of its group outlived it; killed them")
            sv.signal_group(self.pid, signal.SIGKILL)
        code = self.proc.returncode
        if check and code not in self.expected_returncodes:
            problems.append(f"{self.name} exited with {sv.describe_exit(code)}")
        if check and "Traceback (most recent call last)" in self.stderr():
            problems.append(f"{self.name} printed a traceback on stderr ({self.stderr_path})")
        return problems

    def kill(self) -> None:
        """SIGKILL the whole group (a crash, from the outside)."""
        if self.proc is not None:
            sv.signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # -- output

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


class SupervisorProcess(TestProcess):
    """`custody up` under test; readiness is "every process ready" in its state file."""

    __test__ = False

    def __init__(self, deployment: Deployment, argv: Sequence[str], name: str) -> None:
        super().__init__(deployment, name, argv, ready_name=None)
        self.pids_seen: set[int] = set()

    def stop(self, timeout: float = 60.0, *, check: bool = True) -> list[str]:
        """As `TestProcess.stop`, with longer to stop: the supervisor stops its processes one
        at a time in reverse order, each within its own stop timeout, and on a loaded machine a
        deployment's ten took more than the 15 s one process gets. Needing SIGKILL is still a
        problem."""
        return super().stop(timeout, check=check)

    def state(self) -> dict[str, Any] | None:
        """`run/supervisor.json`, remembering every pid it ever reported."""
        try:
            data = json.loads((self.deployment.run_dir / sv.STATE_FILENAME).read_text())
        except (OSError, ValueError):
            return None
        for p in data.get("processes", []):
            self.pids_seen.update(p.get("pids", []))
        return data

    def processes(self) -> dict[str, dict[str, Any]]:
        state = self.state() or {}
        return {p["name"]: p for p in state.get("processes", [])}

    def is_ready(self) -> bool:
        state = self.state()
        if not state or state.get("pid") != self.pid:  # not a stale file of a killed one
            return False
        return state.get("phase") == sv.Phase.RUNNING and all(
            p["state"] == sv.ProcState.READY for p in state["processes"]
        )

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> SupervisorProcess:
        def check() -> bool:
            self.assert_running()
            return self.is_ready()

        wait_until(check, timeout, "the supervisor to report every process ready")
        return self


class Deployment:
    """A data directory made by `custody init` and the processes a test runs on it."""

    def __init__(
        self,
        base: Path,
        name: str = "data",
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = (Path(base) / name).resolve()
        init_deployment(self.data_dir)
        self.env: dict[str, str] = {
            k: v for k, v in os.environ.items() if not k.startswith(("CC__", "CC_"))
        }
        self.env.update({"CC_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"})
        if env:
            self.env.update(env)
        self.processes: list[TestProcess] = []
        if config:
            self.configure(config)

    # -- configuration

    @property
    def config_path(self) -> Path:
        return self.data_dir / "chaincloud.toml"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def dev_dir(self) -> Path:
        return self.data_dir / "dev"

    @property
    def config(self) -> Config:
        """The configuration as the processes see it (file plus `CC__` overrides of `env`)."""
        return load_config(self.data_dir, environ=self.env, role=ALL_ROLES)

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Merge `changes` (nested tables) into every file that holds them (the map and the
        role files of the processes that read them)."""
        write_settings(self.data_dir, changes)

    def set_env(self, section: str, key: str, value: object) -> None:
        """Override `[section] key` for processes started from now on (`CC__SECTION__KEY`)."""
        name = "CC__" + "__".join(p.upper() for p in [*section.split("."), key])
        self.env[name] = str(value).lower() if isinstance(value, bool) else str(value)

    def port(self, section: str, key: str = "port") -> int:
        """A port picked free by `custody init` for this deployment."""
        return self.config.section(section).int(key)

    # -- processes

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_name: str | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_READY_TIMEOUT,
        expected_returncodes: Iterable[int] = (0,),
    ) -> TestProcess:
        """Start `argv`; with a `ready_name` and `wait`, return once it is ready."""
        proc = TestProcess(self, self._unique(name), argv, ready_name, expected_returncodes)
        self.processes.append(proc)
        proc.start()
        if ready_name is not None and wait:
            proc.wait_ready(timeout)
        return proc

    def start_cli(
        self,
        name: str,
        module: str,
        command: str,
        *args: str,
        ready_name: str | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> TestProcess:
        """`python -m <module> <command> --dir <data> *args`, ready file `ready_name or name`."""
        argv = [sys.executable, "-m", module, command, "--dir", str(self.data_dir), *args]
        return self.start(name, argv, ready_name=ready_name or name, wait=wait, timeout=timeout)

    def start_supervisor(
        self, *args: str, wait: bool = True, timeout: float = DEFAULT_READY_TIMEOUT
    ) -> SupervisorProcess:
        """`custody up` as a real subprocess; with `wait`, return once all are ready."""
        argv = [sys.executable, "-m", "custody.cli", "up", "--dir", str(self.data_dir), *args]
        proc = SupervisorProcess(self, argv, self._unique("supervisor"))
        self.processes.append(proc)
        proc.start()
        if wait:
            proc.wait_ready(timeout)
        return proc

    def cli(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60.0,
        module: str = "custody.cli",
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command-line tool to completion (`custody ...` by default) on this deployment,
        `stdin` typed into it."""
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=self.env,
            cwd=self.data_dir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{module} {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"
            )
        return result

    def ports(self) -> dict[str, int]:
        """Every `port` of the configuration, by dotted section name."""
        found: dict[str, int] = {}

        def walk(node: Mapping[str, Any], prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    walk(value, f"{prefix}{key}.")
                elif key == "port" and isinstance(value, int):
                    found[prefix.rstrip(".")] = value

        walk(self.config.raw, "")
        return found

    def busy_ports(self) -> dict[str, int]:
        """Configured ports that something still listens on (none after a clean stop)."""
        busy = {}
        for name, port in self.ports().items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy[name] = port
        return busy

    def _unique(self, name: str) -> str:
        """`name`, or `name-2`, `name-3`... so each process has log files of its own."""
        taken = {p.name for p in self.processes}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Live processes whose command line or environment mentions this data directory."""
        return sv.processes_referencing(str(self.data_dir))

    def stop(self, *, check: bool = True) -> list[str]:
        """Stop every process in reverse order; return problems (leftovers, bad exits)."""
        problems: list[str] = []
        for proc in reversed(self.processes):
            problems += proc.stop(check=check)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.leftover_processes(), 5.0, "leftover processes to exit")
        for pid, cmd in self.leftover_processes():
            problems.append(f"process {pid} left behind (killed now): {cmd}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return problems

    @contextlib.contextmanager
    def serving(self) -> Iterator[Deployment]:
        """A module fixture's life of this deployment: the log tails printed if anything
        fails, every process stopped (and checked) after."""
        try:
            yield self
        except BaseException:
            print(self.log_tails())
            raise
        finally:
            problems = self.stop()
            assert not problems, problems

    # -- logs

    def log_files(self) -> list[Path]:
        if not self.log_dir.is_dir():
            return []
        return sorted(p for p in self.log_dir.iterdir() if p.is_file())

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every log file, for a failed test's report."""
        parts = []
        for path in self.log_files():
            text = tail(path, lines)
            if text.strip():
                parts.append(f"----- {path} (last {lines} lines)\n{text}")
        return "\n".join(parts) or f"(no logs in {self.log_dir})"
