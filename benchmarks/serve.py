"""`custody serve` (gunicorn) started for a benchmark, on a deployment directory of its own.

Shared by the API benchmarks: write the config with a free port, start the server in its own
process group, wait for its ready file (failing fast if it exits), stop it afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cc_common.config import Config  # noqa: E402
from cc_common.deployment import free_port  # noqa: E402


@contextmanager
def custody_server(config: Config, data_dir: Path, **custody: Any) -> Iterator[int]:
    """Run `custody serve` for `config` (with `[custody]` keys overridden by `custody`);
    yields its port."""
    port = free_port()
    raw = dict(config.raw)
    raw["custody"] = {**raw["custody"], "port": port, **custody}
    (data_dir / "run").mkdir(exist_ok=True)
    (data_dir / "custody.toml").write_text(tomli_w.dumps(raw))
    # stderr to a file: a pipe nobody reads fills up (64 KiB of log lines) and then blocks
    # every worker that logs, which a long run would measure instead of the server
    errors = data_dir / "serve.stderr"
    server = subprocess.Popen(
        [sys.executable, "-m", "custody.cli", "serve", "--dir", str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=errors.open("wb"),
        start_new_session=True,
    )
    try:
        ready = data_dir / "run" / "custody-api.ready"
        deadline = time.monotonic() + 60
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("custody serve did not start: " + errors.read_text())
            time.sleep(0.1)
        yield port
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
