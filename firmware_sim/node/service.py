"""Run the node as its own process: bind the RPC port, load the chain, serve until stopped.

Configuration is `[firmware_sim.node]`: host, port, datadir, rpc_user, rpc_password, and
optionally `estimate_feerate` (BTC/kvB answered by `estimatesmartfee`; 0 = no estimate) and
`txindex` (default false, as Core: mined transactions only by block hash).
"""

from __future__ import annotations

import errno
import logging
import threading
from decimal import Decimal

from cc_common.config import Config
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from firmware_sim.node.errors import NodeStartError
from firmware_sim.node.formatting import use_regtest
from firmware_sim.node.node import Node, NodeSettings
from firmware_sim.node.rpc_server import COOKIE_FILENAME, Dispatcher, RPCServer, write_cookie

log = logging.getLogger(__name__)

READY_NAME = "node"
DEFAULT_ESTIMATE_FEERATE = 0.0001  # BTC/kvB = 10 sat/vB


def settings_from_config(config: Config) -> NodeSettings:
    section = config.section("firmware_sim.node")
    rate = Decimal(str(section.float("estimate_feerate", default=DEFAULT_ESTIMATE_FEERATE)))
    return NodeSettings(
        estimate_feerate_sat_kvb=int(rate * 100_000_000),
        txindex=section.bool("txindex", default=False),
    )


def serve(config: Config) -> int:
    """Serve the regtest node until SIGTERM/SIGINT or the `stop` RPC."""
    use_regtest()
    section = config.section("firmware_sim.node")
    host = section.str("host")
    port = section.int("port")
    datadir = section.path("datadir")
    datadir.mkdir(parents=True, exist_ok=True)
    node = Node(datadir, settings_from_config(config))
    try:
        server = RPCServer(
            (host, port), Dispatcher(node), section.str("rpc_user"), section.secret("rpc_password")
        )
    except OSError as exc:
        node.storage.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise NodeStartError(f"node: cannot listen on {host}:{port}: {reason}") from None
    stop = install_stop_handlers(node.stop_requested.set)
    node.load()
    cookie_path, secret = write_cookie(datadir)
    server.add_cookie(secret)
    thread = threading.Thread(target=server.serve_forever, name="rpc-http", daemon=True)
    thread.start()
    mark_ready(config.run_dir, READY_NAME, url=f"http://{host}:{port}", cookie=str(cookie_path))
    log.info("regtest node listening on %s:%d; height %d", host, port, node.chain.height)
    try:
        while not stop.is_set() and not node.stop_requested.wait(0.5):
            pass
    finally:
        log.info("stopping")
        clear_ready(config.run_dir, READY_NAME)
        server.shutdown()
        server.server_close()
        node.close()
        (datadir / COOKIE_FILENAME).unlink(missing_ok=True)
    return 0
