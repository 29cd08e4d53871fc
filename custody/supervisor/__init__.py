"""The process supervisor behind `custody up`, `custody status` and `custody down`.

One module per job: `specs` (the process table and its order), `procfs` (what `/proc` says
about process groups and strays), `lock` (one supervisor per data directory), `runner` (the run
loop: start, readiness, restart, stop) and `status` (reading and rendering what runs).
"""

from custody.supervisor.common import (
    EVENT_LOG_FILENAME,
    LOCK_FILENAME,
    STATE_FILENAME,
    SUPERVISED_ENV,
    SUPERVISOR_ENV,
    Phase,
    ProcState,
    SupervisorError,
    describe_exit,
    format_duration,
    lock_path,
    state_path,
)
from custody.supervisor.lock import PidLock, lock_owner
from custody.supervisor.procfs import (
    group_alive,
    orphans_of,
    processes_referencing,
    processes_with_env,
    remove_dangling_links,
    signal_group,
)
from custody.supervisor.runner import Managed, Supervisor
from custody.supervisor.specs import (
    DEFAULT_SPECS,
    ProcessSpec,
    Settings,
    cli_spec,
    order_specs,
    plan,
)
from custody.supervisor.status import (
    Status,
    StatusRow,
    read_status,
    ready_pid,
    render_status,
    stop_supervisor,
    wait_status,
)

__all__ = [
    "DEFAULT_SPECS",
    "EVENT_LOG_FILENAME",
    "LOCK_FILENAME",
    "STATE_FILENAME",
    "SUPERVISED_ENV",
    "SUPERVISOR_ENV",
    "Managed",
    "Phase",
    "PidLock",
    "ProcState",
    "ProcessSpec",
    "Settings",
    "Status",
    "StatusRow",
    "Supervisor",
    "SupervisorError",
    "cli_spec",
    "describe_exit",
    "format_duration",
    "group_alive",
    "lock_owner",
    "lock_path",
    "order_specs",
    "orphans_of",
    "plan",
    "processes_referencing",
    "processes_with_env",
    "read_status",
    "ready_pid",
    "remove_dangling_links",
    "render_status",
    "signal_group",
    "state_path",
    "stop_supervisor",
    "wait_status",
]
