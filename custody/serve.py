"""`custody serve`: the custody API under gunicorn, in this process (gunicorn's arbiter).

Running the arbiter in-process keeps the pid the supervisor started as the master, so the
readiness file `run/custody-api.ready` (written by the `when_ready` hook once the app answers
on its socket) names the right process; it is removed when the master exits. The service
refuses to start with a placeholder `[custody] secret_key`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import requests
from flask import Flask
from gunicorn.app.base import BaseApplication

from cc_common.config import Config
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, mark_ready

log = logging.getLogger(__name__)

READY_NAME = "custody-api"
READY_PROBE = "/api/v1/openapi.json"
READY_DEADLINE = 60.0


class CustodyApplication(BaseApplication):
    """gunicorn application: settings from `Config`, app made by `custody.app.create_app`."""

    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self.cc_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        # Imported here: each gunicorn worker builds the app after the fork, not the master.
        from custody.app import create_app  # noqa: PLC0415 (after gunicorn's fork)

        return create_app(self.cc_config)


def _wait_answering(host: str, port: int, deadline: float) -> bool:
    url = f"http://{host}:{port}{READY_PROBE}"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return False


def gunicorn_options(config: Config, workers: int | None = None) -> dict[str, Any]:
    s = config.section("custody")
    host, port = s.str("host"), s.int("port")
    run_dir = config.run_dir

    def when_ready(server: Any) -> None:
        def probe() -> None:
            if _wait_answering(host, port, READY_DEADLINE):
                mark_ready(run_dir, READY_NAME, url=f"http://{host}:{port}/api/v1/open")
                log.info("custody API ready on %s:%d", host, port)
            else:
                log.error("custody API does not answer on %s:%d", host, port)

        threading.Thread(target=probe, name="ready-probe", daemon=True).start()

    def on_exit(server: Any) -> None:
        clear_ready(run_dir, READY_NAME)

    return {
        "bind": f"{host}:{port}",
        "workers": workers or s.int("workers", 2),
        "worker_class": "gthread",
        "threads": s.int("threads", 4),
        "keepalive": 30,
        "timeout": s.int("worker_timeout", 60),
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "custody-api",
        # per deployment, not gunicorn's default ~/.gunicorn/gunicorn.ctl shared by all
        "control_socket": str(run_dir / "custody-api.ctl"),
        "when_ready": when_ready,
        "on_exit": on_exit,
    }


def serve(config: Config, *, workers: int | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    config.section("custody").secret("secret_key")  # refuses a placeholder secret
    setup_logging("custody-api", config.log_dir)
    os.environ.setdefault("CC_DATA_DIR", str(config.data_dir))
    CustodyApplication(config, gunicorn_options(config, workers)).run()
    return 0
