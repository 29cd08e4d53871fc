"""The console's real sources for one deployment: its database, the supervisor's status, the
hot HSM's RPC and the node (kept apart from the app so tests can pass their own)."""

from __future__ import annotations

from typing import Any

from cc_common.config import Config
from custody import supervisor as sv
from custody.chain.rpc import BitcoinRPC
from custody.db import database_url, make_engine, make_session_factory
from custody.hsm_client import HotHsmClient
from custody.operator.snapshot import Snapshotter

HSM_TIMEOUT = 5.0  # a console refresh never waits on a stalled HSM longer than this
NODE_TIMEOUT = 5.0


def supervised_processes(config: Config) -> list[dict[str, Any]]:
    """The supervisor's view of every process (`custody status`), as plain rows."""
    status = sv.read_status(config)
    return [
        {
            "name": r.name,
            "pid": r.pid,
            "state": str(r.state),
            "uptime": r.uptime,
            "ready": r.ready,
            "restarts": r.restarts,
        }
        for r in status.rows
    ]


def snapshotter_for(config: Config) -> Snapshotter:
    factory = make_session_factory(make_engine(database_url(config), pool_size=2))
    hot = HotHsmClient.from_config(config)
    hot.timeout = HSM_TIMEOUT
    node = BitcoinRPC.from_config(config)
    node.timeout = NODE_TIMEOUT
    node.retries = 0
    return Snapshotter(
        config,
        factory,
        read_processes=lambda: supervised_processes(config),
        hot_hsm=hot,
        node=node,
    )
