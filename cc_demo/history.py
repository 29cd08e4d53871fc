"""A chain with history for the demo: `python -m cc_demo --dir D --history 1000`.

Before `custody up`, the deployment's own node is started alone and mines that many blocks,
with unrelated payments between strangers in them, then stopped: the deployment then comes
up against a node that has history and no txindex (the simulated node's default, as Bitcoin
Core's), as an operator's node would be, and the demo runs on it unchanged.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from cc_common.config import Config
from cc_common.process import read_ready
from cc_demo.support import Faucet, StepFailed, network_of, node_rpc, random_address

NODE_READY_WITHIN = 60.0
BLOCKS_PER_ROUND = 25  # blocks mined between two rounds of unrelated payments
PAYMENTS_PER_ROUND = 2
REFILL_BLOCKS = 101  # a faucet refill: a coinbase and the 100 blocks that make it spendable


def make_history(config: Config, blocks: int, env: Mapping[str, str] | None = None) -> str:
    """Mine the node of `config` up to `blocks` blocks with unrelated payments in them;
    returns one line saying what the chain holds. The node must not be running; `env` is
    the environment it runs in (this process's by default)."""
    if read_ready(config.run_dir, "node") is not None:
        raise StepFailed("the node is running: stop the deployment first (`custody down`)")
    env = {**(os.environ if env is None else env), "CC_DATA_DIR": str(config.data_dir)}
    argv = [sys.executable, "-m", "firmware_sim.cli", "node", "--dir", str(config.data_dir)]
    log = config.log_dir / "history-node.out"
    config.log_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        node = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    try:
        _wait_ready(config, node)
        return _mine(config, blocks)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(5)


def _wait_ready(config: Config, node: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + NODE_READY_WITHIN
    while read_ready(config.run_dir, "node") is None:
        if node.poll() is not None:
            raise StepFailed(f"the node exited ({node.returncode}); see logs/history-node.out")
        if time.monotonic() > end:
            raise StepFailed(f"the node was not ready within {NODE_READY_WITHIN:.0f}s")
        time.sleep(0.1)


def _mine(config: Config, blocks: int) -> str:
    rpc = node_rpc(config)
    network = network_of(config)
    faucet = Faucet(rpc, network)
    paid = 0
    while (height := rpc.get_block_count()) < blocks:
        if height + REFILL_BLOCKS < blocks:  # room for a faucet refill
            payments = [
                (random_address(network), 10_000 + secrets.randbelow(5_000_000))
                for _ in range(1 + secrets.randbelow(3))
            ]
            for _ in range(PAYMENTS_PER_ROUND):
                faucet.pay(payments)
                paid += 1
        count = min(BLOCKS_PER_ROUND, blocks - rpc.get_block_count())
        if count > 0:
            rpc.generate_to_address(count, random_address(network))
    height = rpc.get_block_count()
    return f"node history: {height} blocks with {paid} unrelated payments (no txindex)"
