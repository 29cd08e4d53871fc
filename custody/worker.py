"""`custody worker`: the background process that watches the chain and processes hot sends.

Loop: one watcher step, one sends step (then fee bumps, the consolidation schedule and the
account states), then wait `[custody] worker_interval` seconds (default
1.0). Ready (`run/custody-worker.ready`) once it reached the node and its database: catching up
with a node that is far ahead is progress (`run/chain-progress.json`, the log, `custody
status`), not a reason to stay unready. `--rescan-from HEIGHT` (or `[custody] rescan_from`,
honoured once per value) re-reads older blocks in the background.
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

from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from cc_common.cli import add_dir_argument, config_from_args, int_at_least
from cc_common.config import Config
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from custody import fee_bump
from custody.chain.errors import ChainUnavailable, RPCError
from custody.chain.rpc import BitcoinRPC
from custody.chain_progress import ProgressTracker
from custody.consolidation_schedule import ConsolidationSchedule, ScheduleSettings
from custody.db import database_url, make_engine, make_session_factory, transaction
from custody.errors import DatabaseUnavailable
from custody.freezes import DEFAULT_INTERVAL as DEFAULT_STATE_INTERVAL
from custody.freezes import FreezeFollower
from custody.hsm_client import HotHsmClient
from custody.sends import SendSettings, SendWorker
from custody.watcher import Watcher, WatcherSettings
from custody.webhooks import Deliverer, WebhookSettings

log = logging.getLogger(__name__)
READY_NAME = "custody-worker"


@dataclass
class Worker:
    """A watcher and a send worker sharing one database and one node connection."""

    config: Config
    watcher: Watcher
    sends: SendWorker
    interval: float
    progress: ProgressTracker | None = None
    freezes: FreezeFollower | None = None
    deliverer: Deliverer | None = None
    consolidations: ConsolidationSchedule | None = None

    @classmethod
    def from_config(cls, config: Config) -> Worker:
        engine = make_engine(database_url(config), pool_size=2)
        factory = make_session_factory(engine)
        rpc = BitcoinRPC.from_config(config)
        watcher = Watcher(factory, rpc, WatcherSettings.from_config(config), config)
        hsm = HotHsmClient.from_config(config)
        sends = SendWorker(factory, rpc, hsm, SendSettings.from_config(config), config)
        s = config.section("custody")
        interval = s.float("worker_interval", 1.0)
        follower = FreezeFollower(
            factory, hsm, config, s.float("account_state_interval", DEFAULT_STATE_INTERVAL)
        )
        deliverer = Deliverer(factory, WebhookSettings.from_config(config))
        schedule = ConsolidationSchedule(factory, rpc, hsm, ScheduleSettings.from_config(config))
        return cls(
            config,
            watcher,
            sends,
            interval,
            ProgressTracker(config.run_dir),
            follower,
            deliverer,
            schedule,
        )

    def reachable(self) -> bool:
        """The node answers and the database opens: enough to be ready."""
        try:
            self.watcher.rpc.get_block_count()
            with transaction(self.watcher.factory) as s:
                s.execute(text("SELECT 1"))
            self.watcher.load_filters()
        except (ChainUnavailable, RPCError) as exc:
            log.warning("worker: node unavailable: %s", exc)
            return False
        except DatabaseUnavailable as exc:
            log.warning("worker: %s", exc.message)
            return False
        except SQLAlchemyError as exc:
            log.warning("worker: database unavailable: %s", type(exc).__name__)
            return False
        return True

    def deliver_webhooks(self, stop: threading.Event) -> None:
        """The webhook deliverer's own loop: a slow endpoint never delays chain or sends."""
        assert self.deliverer is not None
        while not stop.is_set():
            try:
                self.deliverer.step()
            except Exception:
                log.exception("webhook step failed")
            stop.wait(self.deliverer.settings.interval)

    def run_once(self) -> bool:
        """One watcher step and one sends step; True if the node answered."""
        node_ok = False
        try:
            result = self.watcher.step()
            node_ok = True
            if self.progress is not None and result.tip is not None:
                done = result.connected + result.rescanned
                self.progress.update(result.tip, result.height, done, result.rescan)
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
        try:
            fee_bump.auto_bump(self.sends, self.sends.settings.bump_after_blocks)
        except Exception:
            log.exception("fee bump step failed")
        if self.consolidations is not None:
            try:
                self.consolidations.step()
            except Exception:
                log.exception("consolidation schedule step failed")
        if self.freezes is not None:
            try:
                self.freezes.step()
            except Exception:
                log.exception("account state step failed")
        return node_ok

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        ready = False
        if self.deliverer is not None and not once:
            threading.Thread(
                target=self.deliver_webhooks, args=(stop,), name="webhooks", daemon=True
            ).start()
        try:
            while not stop.is_set():
                if not ready and self.reachable():
                    mark_ready(self.config.run_dir, READY_NAME)
                    ready = True
                    log.info("custody worker ready")
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
    worker = Worker.from_config(config)
    configured = config.section("custody").int("rescan_from", -1)
    try:
        if args.rescan_from is not None:
            log.info(worker.watcher.request_rescan(args.rescan_from))
        elif configured >= 0:
            log.info(worker.watcher.request_rescan(configured, once_per_value=True))
    except SQLAlchemyError as exc:
        log.error("rescan not recorded (database: %s); it is not done", type(exc).__name__)
    return worker.run(stop, once=args.once)


def register(sub: Any) -> None:
    """Add `custody worker` to the `custody` parser."""
    p = sub.add_parser("worker", help="watch the chain and process hot sends (background)")
    add_dir_argument(p)
    p.add_argument("--once", action="store_true", help="do one step and exit (status 1: no node)")
    p.add_argument(
        "--rescan-from",
        type=int_at_least(0, "a block height"),
        default=None,
        metavar="HEIGHT",
        help="re-read the chain from block HEIGHT (deposits before the first start); "
        "by default the watcher starts at the node's tip",
    )
    p.set_defaults(handler=cmd_worker)
