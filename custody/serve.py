"""`custody serve`: the custody API under gunicorn, in this process (gunicorn's arbiter).

Running the arbiter in-process keeps the pid the supervisor started as the master, so the
readiness file `run/custody-api.ready` (written by the `when_ready` hook once the app answers
on its socket) names the right process; it is removed when the master exits. The service
refuses to start with a placeholder `[custody] secret_key`.

The readiness probe is the one thread of the arbiter, and the arbiter forks the workers: a
fork copies every lock as it is and none of the other threads, so a lock the probe holds at
that instant stays taken forever in the worker. With `requests`, the probe's first call
imports `netrc` (requests looks for credentials on every request): a worker forked during
that import inherits the module's import lock held by a thread it does not have, and every
hot HSM call of that worker then waits on `from netrc import ...` forever, before any
timeout applies, without a log line (tests/test_api_fork.py). So the probe waits until the
workers are forked, and speaks HTTP on a bare socket: no import, no library lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from cc_common.config import Config
from cc_common.errors import ConfigError
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, mark_ready
from custody.api.timing import DEFAULT_THREADS
from wallet_core import derive_helper

log = logging.getLogger(__name__)

READY_NAME = "custody-api"
READY_PROBE = "/api/v1/openapi.json"
READY_DEADLINE = 60.0
# `[custody] worker_class`: how a gunicorn worker reads HTTP. "custody" (custody/http_worker.py)
# serves each keep-alive connection on one thread; "gthread" is gunicorn's own, the fallback.
WORKER_CLASSES = {"custody": "custody.http_worker.CustodyWorker", "gthread": "gthread"}
DEFAULT_WORKER_CLASS = "custody"


def _custody_api(config: Config) -> Any:
    from custody.app import create_app  # noqa: PLC0415 (in the worker, after gunicorn's fork)

    derive_helper.start()  # this worker's second core for address batches, ready before one
    return create_app(config)


class CustodyApplication(BaseApplication):
    """gunicorn application: settings from `Config`, the app made by `factory(config)`
    (the custody API by default; the operator console passes its own)."""

    def __init__(
        self,
        config: Config,
        options: dict[str, Any],
        factory: Callable[[Config], Any] = _custody_api,
    ) -> None:
        self.cc_config = config
        self.options = options
        self.factory = factory
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        return self.factory(self.cc_config)


def _answers_200(host: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """Whether `GET path` on host:port answers HTTP 200: a bare socket, so the probe takes no
    lock and imports nothing a forked worker could inherit half-taken (module doc)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return head.startswith((b"HTTP/1.0 200 ", b"HTTP/1.1 200 "))


def _workers_forked(server: Any, end: float) -> None:
    """Wait (until `end`) for the arbiter to have forked all its workers."""
    while time.monotonic() < end and len(server.WORKERS) < server.num_workers:
        time.sleep(0.05)


def _wait_answering(host: str, port: int, deadline: float, probe: str = READY_PROBE) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _answers_200(host, port, probe):
            return True
        time.sleep(0.05)
    return False


def gunicorn_options(config: Config, workers: int | None = None) -> dict[str, Any]:
    s = config.section("custody")
    host, port = s.str("host"), s.int("port")
    return listener_options(
        config,
        name=READY_NAME,
        host=host,
        port=port,
        probe=READY_PROBE,
        url=f"http://{host}:{port}/api/v1/open",
        workers=workers or s.int("workers", 2),
        threads=s.int("threads", DEFAULT_THREADS),
        worker_timeout=s.int("worker_timeout", 60),
        worker_class=worker_class(config),
    )


def worker_class(config: Config) -> str:
    """gunicorn's worker class for `[custody] worker_class` ("custody" or "gthread")."""
    name = config.section("custody").str("worker_class", DEFAULT_WORKER_CLASS)
    if name not in WORKER_CLASSES:
        raise ConfigError(
            f"config: [custody] worker_class must be one of {sorted(WORKER_CLASSES)}, not {name!r}"
        )
    return WORKER_CLASSES[name]


def listener_options(
    config: Config,
    *,
    name: str,
    host: str,
    port: int,
    probe: str,
    url: str,
    workers: int,
    threads: int,
    worker_timeout: int = 60,
    worker_class: str = "gthread",
) -> dict[str, Any]:
    """gunicorn settings for one of custody's listeners; ready once `probe` answers 200."""
    run_dir = config.run_dir

    def when_ready(server: Any) -> None:
        def wait() -> None:
            _workers_forked(server, time.monotonic() + READY_DEADLINE)
            if _wait_answering(host, port, READY_DEADLINE, probe):
                mark_ready(run_dir, name, url=url)
                log.info("%s ready on %s:%d", name, host, port)
            else:
                log.error("%s does not answer on %s:%d", name, host, port)

        threading.Thread(target=wait, name="ready-probe", daemon=True).start()

    def on_exit(server: Any) -> None:
        clear_ready(run_dir, name)

    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": worker_class,
        "threads": threads,
        "keepalive": 30,
        "timeout": worker_timeout,
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": name,
        # per deployment, not gunicorn's default ~/.gunicorn/gunicorn.ctl shared by all
        "control_socket": str(run_dir / f"{name}.ctl"),
        "when_ready": when_ready,
        "on_exit": on_exit,
    }


def serve(config: Config, *, workers: int | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    config.section("custody").secret("secret_key")  # refuses a placeholder secret
    setup_logging("custody-api", config.log_dir, fmt=config.log_format)
    os.environ.setdefault("CC_DATA_DIR", str(config.data_dir))
    CustodyApplication(config, gunicorn_options(config, workers)).run()
    return 0
