"""feature_supervisor: `custody up` / `status` / `down` as real processes.

The supervisor is run as the operator runs it (a subprocess of `custody up`). Small dummy
processes (injected with `[[supervisor.extra]]`) exercise each behaviour quickly: readiness,
restart with backoff, giving up, fail-fast startup, a second supervisor refused, and a stop that
leaves nothing behind, not even helpers that left the process group. Then the same is done with
the real simulated hardware (`firmware-sim serve`, `firmware-sim node`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from cc_common.config import Config
from cc_common.ports import ephemeral_range
from cc_common.process import pid_alive
from custody import supervisor as sv
from tests.harness import Deployment, SupervisorProcess, wait_until

# A stand-in for a serve command: a pty-like link in dev/, a helper in its process group and
# one that escaped it (setsid), a ready file; cleans up on SIGTERM like a real process must.
DUMMY = r"""
import os, subprocess, sys, time
from pathlib import Path
from cc_common.process import clear_ready, install_stop_handlers, mark_ready

name, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "serve")
data = Path(os.environ["CC_DATA_DIR"])
if mode == "crash":
    print(f"{name}: boom, cannot start", file=sys.stderr, flush=True)
    sys.exit(3)
stop = install_stop_handlers()
link = data / "dev" / f"dummy-{name}"
link.unlink(missing_ok=True)
link.symlink_to("/dev/null")
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
subprocess.Popen(sleeper)
subprocess.Popen(sleeper, start_new_session=True)
print(f"{name}: up", file=sys.stderr, flush=True)
mark_ready(data / "run", name)
if mode == "die":
    time.sleep(0.2)
    link.unlink()
    sys.exit(4)
stop.wait()
link.unlink(missing_ok=True)
clear_ready(data / "run", name)
print(f"{name}: bye", file=sys.stderr, flush=True)
"""


def dummy_deployment(
    deployment: Any, tmp_path: Path, procs: dict[str, str], **settings: Any
) -> Deployment:
    """A deployment whose supervisor runs only the dummies `procs` (name -> mode)."""
    script = tmp_path / "dummy_process.py"
    script.write_text(DUMMY)
    d: Deployment = deployment()
    extra = []
    previous: list[str] = []
    for name, mode in procs.items():
        extra.append(
            {"name": name, "argv": ["{python}", str(script), name, mode], "after": previous}
        )
        previous = [name]
    d.configure(
        {
            "supervisor": {
                "only": list(procs),
                "extra": extra,
                "backoff_initial": 0.1,
                "ready_timeout": 20.0,
                **settings,
            }
        }
    )
    return d


def status_json(d: Deployment) -> tuple[int, dict[str, Any]]:
    result = d.cli("status", "--json", check=False)
    return result.returncode, json.loads(result.stdout)


def assert_nothing_left(d: Deployment, sup: SupervisorProcess) -> None:
    """Every pid the supervisor reported is gone, nothing references the data directory,
    no configured port is taken, no link is left in dev/, no state file, and
    `custody status` says nothing runs."""
    alive = [pid for pid in sup.pids_seen if pid_alive(pid)]
    assert not alive, f"supervised pids still alive: {alive}"
    assert d.leftover_processes() == []
    assert d.busy_ports() == {}
    assert [p.name for p in d.dev_dir.iterdir()] == []
    assert not (d.run_dir / sv.STATE_FILENAME).exists()
    assert not list(d.run_dir.glob("*.ready"))
    result = d.cli("status", check=False)
    assert result.returncode == 3, result.stdout
    assert "nothing runs" in result.stdout
    assert "no stray process" in result.stdout


def stop_supervisor(sup: SupervisorProcess) -> None:
    sup.signal(signal.SIGTERM)
    code = sup.wait_exit(timeout=60)
    assert code == 0, sup.stdout()
    assert "SIGTERM received; stopping" in sup.stdout()
    assert "all processes stopped" in sup.stdout()


def test_status_without_supervisor(deployment: Any) -> None:
    d = deployment()
    result = d.cli("status", check=False)
    assert result.returncode == 3
    assert "nothing runs" in result.stdout
    assert d.cli("down").stdout.startswith("no supervisor runs")


def test_up_status_restart_and_clean_stop(deployment: Any, tmp_path: Path) -> None:
    d = dummy_deployment(deployment, tmp_path, {"alpha": "serve", "beta": "serve"})
    sup = d.start_supervisor(timeout=30)
    out = sup.stdout()
    assert "[supervisor] alpha: starting" in out
    assert "[alpha] alpha: up" in out, "child stderr is streamed with a [name] prefix"
    assert out.index("alpha: ready in") < out.index("beta: starting"), "dependency order"

    code, status = status_json(d)
    assert code == 0
    assert status["supervisor_pid"] == sup.pid
    assert [(p["name"], p["state"], p["ready"]) for p in status["processes"]] == [
        ("alpha", "ready", True),
        ("beta", "ready", True),
    ]
    table = d.cli("status").stdout
    assert "NAME" in table and "UPTIME" in table and "alpha" in table

    refused = d.cli("up", check=False)
    assert refused.returncode == 2
    assert f"a supervisor already runs on {d.data_dir} (pid {sup.pid})" in refused.stderr

    old_pid = sup.processes()["alpha"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    sup.wait_for_output("alpha: exited (killed by SIGKILL)", timeout=10)
    assert "restarting in 0.1s (restart 1)" in sup.stdout()

    def restarted() -> bool:
        alpha = sup.processes().get("alpha", {})
        return alpha.get("state") == "ready" and alpha.get("pid") not in (None, old_pid)

    wait_until(restarted, timeout=20, what="alpha restarted and ready")
    assert sup.processes()["alpha"]["restarts"] == 1

    stop_supervisor(sup)
    out = sup.stdout()
    assert out.index("beta: stopping") < out.index("alpha: stopping"), "reverse order"
    assert "[beta] beta: bye" in out
    assert len(sup.pids_seen) == 3
    assert_nothing_left(d, sup)


def test_custody_down_stops_the_supervisor(deployment: Any, tmp_path: Path) -> None:
    d = dummy_deployment(deployment, tmp_path, {"alpha": "serve"})
    sup = d.start_supervisor(timeout=30)
    sup.state()
    result = d.cli("down", "--dir", str(d.data_dir))
    assert f"stopped the supervisor (pid {sup.pid})" in result.stdout
    assert sup.wait_exit(timeout=10) == 0
    assert_nothing_left(d, sup)


def test_orphans_of_a_killed_supervisor_are_stopped(deployment: Any, tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL cannot stop its children; the next one does."""
    d = dummy_deployment(deployment, tmp_path, {"alpha": "serve"})
    first = d.start_supervisor(timeout=30)
    first.state()
    first.signal(signal.SIGKILL)
    assert first.wait_exit() == -signal.SIGKILL
    orphan = first.processes()["alpha"]["pid"]
    assert pid_alive(orphan)

    second = d.start_supervisor(timeout=30)
    assert "left by a previous supervisor" in second.stdout()
    assert not pid_alive(orphan)
    second.state()
    second.pids_seen |= first.pids_seen
    stop_supervisor(second)
    assert_nothing_left(d, second)


def test_startup_fails_fast_with_the_tail(deployment: Any, tmp_path: Path) -> None:
    d = dummy_deployment(deployment, tmp_path, {"alpha": "serve", "broken": "crash"})
    sup = d.start_supervisor(wait=False)
    assert sup.wait_exit(timeout=30) == 1
    out = sup.stdout()
    assert "broken: failed: exit code 3 before it was ready" in out
    assert "    broken: boom, cannot start" in out, "the tail of its output is shown"
    assert "alpha: stopped" in out
    sup.state()
    assert_nothing_left(d, sup)


def test_gives_up_after_quick_failures(deployment: Any, tmp_path: Path) -> None:
    d = dummy_deployment(deployment, tmp_path, {"flaky": "die"}, max_quick_failures=2)
    sup = d.start_supervisor(wait=False)
    sup.wait_for_output("flaky: exited (exit code 4)", timeout=20)
    sup.wait_for_output("giving up after 2 quick restarts", timeout=20)
    out = sup.stdout()
    assert "restarting in 0.1s (restart 1)" in out
    assert "restarting in 0.2s (restart 2)" in out, "backoff doubles"
    code, status = status_json(d)
    assert code == 1
    assert status["processes"][0]["state"] == "failed"
    sup.state()
    stop_supervisor(sup)
    assert_nothing_left(d, sup)


# The processes of a local deployment, in start order, written out here rather than read from
# the process table: a process whose program fails to import must fail `custody up`, not vanish.
EXPECTED_PROCESSES = [
    "firmware-sim",
    "node",
    "hsm-cold",
    "hsm-hot",
    "custody-api",
    "custody-worker",
    "custody-operator",
    "merchant-site",
    "vdevice",
]


def test_process_table_lists_every_process() -> None:
    config = Config(data_dir=Path("/nonexistent"), path=Path("/nonexistent/config.toml"), raw={})
    assert [s.name for s in sv.plan(config)] == EXPECTED_PROCESSES


@pytest.mark.parametrize("name", ["firmware-sim", "node"])
def test_supervises_simulated_hardware(deployment: Any, name: str) -> None:
    """The real process: ready under `custody up`, restarted after SIGKILL, stopped clean."""
    d = deployment()
    d.configure({"supervisor": {"only": [name], "backoff_initial": 0.1}})
    sup = d.start_supervisor(timeout=90)
    code, status = status_json(d)
    assert code == 0, status
    assert [(p["name"], p["ready"]) for p in status["processes"]] == [(name, True)]
    assert d.busy_ports(), "the process listens on one of its configured ports"

    old_pid = sup.processes()[name]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    sup.wait_for_output(f"{name}: exited (killed by SIGKILL)", timeout=10)
    wait_until(
        lambda: sup.is_ready() and sup.processes()[name]["pid"] != old_pid,
        timeout=90,
        what=f"{name} restarted and ready",
    )
    stop_supervisor(sup)
    assert f"{name}: stopped (exit code 0)" in sup.stdout(), "stops on SIGTERM by itself"
    assert_nothing_left(d, sup)


@pytest.mark.slow
def test_up_runs_every_built_process(deployment: Any) -> None:
    """`custody up` with the default process table: every process comes up and goes."""
    d = deployment()
    sup = d.start_supervisor(timeout=180)
    code, status = status_json(d)
    assert code == 0, status
    assert [p["name"] for p in status["processes"]] == EXPECTED_PROCESSES
    stop_supervisor(sup)
    assert_nothing_left(d, sup)


def test_init_picks_ports_below_the_ephemeral_range_and_up_names_a_taken_one(
    deployment: Any,
) -> None:

    d = deployment()
    low, _ = ephemeral_range()
    ports = d.ports()
    assert ports and all(p < low for p in ports.values()), ports
    port = d.port("custody")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        out = d.cli("up", "--dir", str(d.data_dir), check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 for custody-api is already in use: "
        f"change [custody] port with `custody config set` (in {d.data_dir})"
    ]
    assert out.stdout == "" and not d.leftover_processes()
