"""The merchant site's batch fetch is answered in time while the worker is busy on SQLite.

The custody API and the custody worker share one SQLite file, which has a single write lock.
A batch fetch writes (the batch and its 1000 addresses); the worker's watcher writes a unit per
block. If the watcher holds the write lock while it waits for the node, every unit keeps the
API waiting for the node, and a catch-up of many blocks done back to back starves the API's
writer outright (SQLite's busy handler polls and loses every race against a writer that takes
the lock again at once): the fetch outlived the site's 15 s without a word in any log.

Here the node answers slowly (a delaying proxy between the worker and the node, as a loaded
node would) while the worker catches up; the fetch must still come back well within the
site's deadline. And a writer that does hold the lock too long gets a clear, logged 503
(code 19) before the site gives up, not a silent hang.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from typing import Any

import pytest

from custody.chain.rpc import BitcoinRPC
from custody.db import SQLITE_BUSY_TIMEOUT
from examples.merchant_site.custody_client import DEFAULT_TIMEOUT as SITE_DEADLINE
from tests.harness import Deployment, wait_until
from tests.hsm_fixtures import (
    HsmPair,
    VDevice,
    confirm_account,
    create_account,
    site_batch_fetch,
)
from tests.node_fixtures import Key

NODE_DELAY = 0.25  # seconds the slow node takes per request
BLOCKS = 40  # the worker's catch-up: ~4 node calls per block, ~40 s with the delay
FETCH_WITHIN = 5.0  # a batch fetch takes ~1 s on an idle machine; the site waits 15 s


class SlowProxy:
    """A TCP proxy that delays every chunk the client sends: a node slow to answer."""

    def __init__(self, target: int, delay: float) -> None:
        self.target, self.delay = target, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


def _watcher_height(db_path: str) -> int:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return int(conn.execute("SELECT coalesce(max(height), -1) FROM blocks_seen").fetchone()[0])


@pytest.mark.slow
def test_batch_fetch_answers_in_time_while_the_worker_catches_up(deployment: Any) -> None:
    d: Deployment = deployment()
    HsmPair(d).start()
    d.start_cli("node", "firmware_sim.cli", "node", timeout=60)
    rpc = BitcoinRPC.from_config(d.config)
    proxy = SlowProxy(d.port("firmware_sim.node"), NODE_DELAY)
    d.cli("db", "upgrade", "--dir", str(d.data_dir))
    d.start_cli("custody-api", "custody.cli", "serve")
    vdev = VDevice("contention")
    created = create_account(d, "contention", vdev)
    confirm_account(d, created["account_id"], vdev.identity_hex)  # the officer at the console
    d.set_env("node", "rpc_url", f"http://127.0.0.1:{proxy.port}")
    d.start_cli("custody-worker", "custody.cli", "worker", timeout=60)
    db_path = d.config.section("custody").str("database_url").removeprefix("sqlite:///")
    wait_until(lambda: _watcher_height(db_path) >= 0, timeout=30, what="the watcher's start")
    rpc.generate_to_address(BLOCKS, Key.from_seed("contention").address)
    tip = rpc.get_block_count()
    wait_until(lambda: _watcher_height(db_path) >= 2, timeout=30, what="the worker catching up")
    took: dict[str, float] = {}
    for side in ("cold", "hot"):
        r, took[side] = site_batch_fetch(d, created["tokens"][side], 0)
        assert r.status_code == 200, r.text
        assert len(r.json()) == 1000
    # The fetches did race the catch-up (else this test proved nothing).
    assert _watcher_height(db_path) < tip, "the worker caught up before the fetches ended"
    assert max(took.values()) < FETCH_WITHIN, took

    # A writer that keeps the lock: a clear 503 in time, and a log line naming the wait.
    holder = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        r, waited = site_batch_fetch(d, created["tokens"]["cold"], 1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        proxy.delay = 0.0  # the worker finishes its catch-up (its step) and can stop
    wait_until(lambda: _watcher_height(db_path) == tip, timeout=60, what="the catch-up's end")
    assert r.status_code == 503, r.text
    assert r.json()["code"] == 19 and "database busy" in r.json()["message"]
    assert SQLITE_BUSY_TIMEOUT <= waited < SITE_DEADLINE - 2
    logs = "".join(p.read_text(errors="replace") for p in d.log_dir.glob("*") if p.is_file())
    assert "GET /api/v1/open/address/batch/1: database busy" in logs
