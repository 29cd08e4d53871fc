"""`custody worker`: the background process that watches the chain and processes hot sends.

Loop: one watcher step, one sends step, then wait `[custody] worker_interval` seconds (default
1.0). Ready (`run/custody-worker.ready`) after the first successful contact with the node.
SIGTERM/SIGINT finish the current step and exit. Several workers may run against one
PostgreSQL database: the watcher takes its lock per unit of work and sends are claimed with
row locks and leases, so they share the work without doing anything twice.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.config import Config
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from custody.chain.errors import ChainUnavailable
from custody.chain.rpc import BitcoinRPC
from custody.db import database_url, make_engine, make_session_factory
from custody.hsm_client import HotHsmClient
from custody.sends import SendSettings, SendWorker
from custody.watcher import Watcher, WatcherSettings

log = logging.getLogger(__name__)
READY_NAME = "custody-worker"


@dataclass
class Worker:
    """A watcher and a send worker sharing one database and one node connection."""

    config: Config
    watcher: Watcher
    sends: SendWorker
    interval: float

    @classmethod
    def from_config(cls, config: Config) -> Worker:
        engine = make_engine(database_url(config), pool_size=2)
        factory = make_session_factory(engine)
        rpc = BitcoinRPC.from_config(config)
        watcher = Watcher(factory, rpc, WatcherSettings.from_config(config), config)
        sends = SendWorker(
            factory, rpc, HotHsmClient.from_config(config), SendSettings.from_config(config), config
        )
        interval = config.section("custody").float("worker_interval", 1.0)
        return cls(config, watcher, sends, interval)

    def run_once(self) -> bool:
        """One watcher step and one sends step; True if the node answered."""
        node_ok = False
        try:
            self.watcher.step()
            node_ok = True
        except ChainUnavailable as exc:
            log.warning("watcher: node unavailable: %s", exc.message)
        except OperationalError:
            log.warning("watcher: database conflict; the step is retried")
        except Exception:
            log.exception("watcher step failed")
        try:
            self.sends.step()
        except Exception:
            log.exception("sends step failed")
        return node_ok

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        ready = False
        try:
            while not stop.is_set():
                if self.run_once() and not ready:
                    mark_ready(self.config.run_dir, READY_NAME)
                    ready = True
                    log.info("custody worker ready")
                if once:
                    return 0 if ready else 1
                stop.wait(self.interval)
        finally:
            self.watcher.release()
            clear_ready(self.config.run_dir, READY_NAME)
        return 0


def cmd_worker(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(READY_NAME, config.log_dir, fmt=config.log_format)
    stop = install_stop_handlers()
    return Worker.from_config(config).run(stop, once=args.once)


def register(sub: Any) -> None:
    """Add `custody worker` to the `custody` parser."""
    p = sub.add_parser("worker", help="watch the chain and process hot sends (background)")
    add_dir_argument(p)
    p.add_argument("--once", action="store_true", help="do one step and exit (status 1: no node)")
    p.set_defaults(handler=cmd_worker)
