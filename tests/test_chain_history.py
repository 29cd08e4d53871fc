"""A deployment against a node that already has history comes up within a minute.

The watcher starts at the node's tip (not at genesis), is ready once it reached the node and
its database, and reports where it is in `custody status`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from custody.chain.rpc import BitcoinRPC
from tests.harness import wait_until
from tests.node_fixtures import Key

HISTORY = 1000
UP_WITHIN = 60.0


@pytest.mark.slow
def test_up_against_a_node_with_history_is_ready_within_a_minute(deployment: Any) -> None:
    d = deployment()
    node = d.start_cli("node", "firmware_sim.cli", "node")
    rpc = BitcoinRPC.from_config(d.config)
    for _ in range(HISTORY // 100):
        rpc.generate_to_address(100, Key.from_seed("history").address)
    assert rpc.get_block_count() == HISTORY
    node.stop()

    started = time.monotonic()
    sup = d.start_supervisor(timeout=UP_WITHIN)
    assert time.monotonic() - started < UP_WITHIN

    def chain() -> dict[str, Any] | None:
        out = d.cli("status", "--json", "--dir", str(d.data_dir), check=False)
        return json.loads(out.stdout).get("chain")

    progress = wait_until(
        lambda: (c := chain()) and c["height"] == HISTORY and c,
        timeout=20,
        what="the watcher at the node's tip",
    )
    assert progress["node_tip"] == HISTORY and progress["behind"] == 0
    text = d.cli("status", "--dir", str(d.data_dir), check=False).stdout
    assert f"chain: node tip {HISTORY}, watcher at block {HISTORY}, 0 behind" in text
    sup.stop()
