"""The custody chain client: typed helpers, Core's errors mapped to our exceptions, and
retries on connection failures only (never on an answered call)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from cc_common.deployment import free_port
from custody.chain import BitcoinRPC, ChainUnavailable, RPCError, TxRejected
from custody.chain.errors import AuthenticationFailed
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    NodeProcess,
    hex_of,
    node_rig,
    spend_p2wpkh,
    txid_hex,
)

node, rpc, key, faucet = node_rig("chain-client", seed="client-miner")


def test_from_config_reads_node_section(node: NodeProcess) -> None:
    rpc = BitcoinRPC.from_config(node.config)
    assert rpc.url == node.url and rpc.timeout == 30.0
    assert "password" not in repr(rpc) and node.password not in repr(rpc)
    assert rpc.get_block_count() >= 0


def test_typed_helpers(node: NodeProcess, faucet: Faucet, key: Key) -> None:
    rpc = node.rpc()
    height = rpc.get_block_count()
    block = rpc.get_block(rpc.get_block_hash(height), 1)
    assert block["height"] == height and rpc.get_best_block_hash() == block["hash"]
    fee = rpc.estimate_smart_fee(2)
    assert fee.feerate == Decimal("0.0001") and fee.errors == ()
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    [check] = rpc.test_mempool_accept([hex_of(tx)])
    assert (check.txid, check.allowed, check.reject_reason) == (txid_hex(tx), True, None)
    assert rpc.send_raw_transaction(hex_of(tx), Decimal("0.01")) == txid_hex(tx)
    assert rpc.get_raw_mempool() == [txid_hex(tx)]
    assert rpc.get_tx_out(txid_hex(tx), 0)["value"] == Decimal(coin[2] - FEE) / 100_000_000
    assert rpc.get_raw_transaction(txid_hex(tx), False) == hex_of(tx)


def test_batched_calls_answer_in_order(node: NodeProcess) -> None:
    """`call_many`: one request, the results in the order asked; an error in one raises."""
    rpc = node.rpc()
    height = rpc.get_block_count()
    hashes = rpc.call_many("getblockhash", [(h,) for h in range(height, -1, -1)])
    assert hashes == [rpc.get_block_hash(h) for h in range(height, -1, -1)]
    block = rpc.get_block(hashes[0], 1)
    [tx] = rpc.get_raw_transactions(block["tx"][:1], 2, hashes[0])
    assert tx["txid"] == block["tx"][0] and tx["blockhash"] == hashes[0]
    assert rpc.call_many("getblockhash", []) == []
    with pytest.raises(RPCError) as info:
        rpc.call_many("getblockhash", [(0,), (height + 1,)])
    assert info.value.rpc_code == -8


def test_rejections_map_to_tx_rejected(node: NodeProcess, faucet: Faucet, key: Key) -> None:
    rpc = node.rpc()
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], high_s=True)
    with pytest.raises(TxRejected) as info:
        rpc.send_raw_transaction(hex_of(tx))
    assert info.value.rpc_code == -26
    assert info.value.reason == (
        "non-mandatory-script-verify-flag-failed "
        "(Non-canonical signature: S value is unnecessarily high)"
    )
    missing = spend_p2wpkh(key, ("22" * 32, 0, 100_000), [(key.script, 50_000)])
    with pytest.raises(TxRejected) as info:
        rpc.send_raw_transaction(hex_of(missing))
    assert (info.value.rpc_code, info.value.reason) == (-25, "bad-txns-inputs-missingorspent")
    assert not info.value.already_in_chain


def test_rpc_errors_are_not_retried(node: NodeProcess) -> None:
    sleeps: list[float] = []
    rpc = node.rpc(sleep=sleeps.append)
    with pytest.raises(RPCError) as info:
        rpc.get_block_hash(99_999)
    assert (info.value.rpc_code, info.value.rpc_message) == (-8, "Block height out of range")
    assert not isinstance(info.value, TxRejected)
    with pytest.raises(RPCError) as info:
        rpc.call("nosuchmethod")
    assert (info.value.rpc_code, info.value.rpc_message) == (-32601, "Method not found")
    assert sleeps == []


def test_bad_credentials_fail_fast(node: NodeProcess) -> None:
    sleeps: list[float] = []
    rpc = BitcoinRPC(node.url, node.user, "wrong-password", sleep=sleeps.append)
    with pytest.raises(AuthenticationFailed):
        rpc.get_block_count()
    assert sleeps == []


def test_cookie_file(node: NodeProcess, tmp_path: Path) -> None:
    assert BitcoinRPC(node.url, cookie_file=node.datadir / ".cookie").get_block_count() >= 0
    with pytest.raises(ChainUnavailable):
        BitcoinRPC(node.url, cookie_file=tmp_path / "missing").get_block_count()


def test_connection_refused_is_retried_with_backoff_then_fails() -> None:
    sleeps: list[float] = []
    rpc = BitcoinRPC(
        f"http://127.0.0.1:{free_port()}", "u", "p", timeout=2, retries=3, sleep=sleeps.append
    )
    with pytest.raises(ChainUnavailable) as info:
        rpc.get_block_count()
    assert "after 4 attempts" in info.value.message
    assert sleeps == [0.2, 0.4, 0.8]


def test_retry_succeeds_when_the_node_comes_back(node: NodeProcess) -> None:
    sleeps: list[float] = []
    rpc = BitcoinRPC(
        f"http://127.0.0.1:{free_port()}", node.user, node.password, sleep=sleeps.append
    )

    def node_comes_back(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 2:
            rpc.url = node.url

    rpc._sleep = node_comes_back
    assert (
        rpc.get_block_hash(0) == "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    )
    assert sleeps == [0.2, 0.4]
