"""Reorganisations: `invalidateblock` disconnects blocks, restores the coins they spent and
returns their transactions to the mempool; `reconsiderblock` reconnects; a conflicting spend
mined on the new branch evicts the mempool transaction; state survives a restart.
"""

from __future__ import annotations

from custody.chain import BitcoinRPC
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    NodeProcess,
    assert_rpc_error,
    hex_of,
    node_rig,
    spend_p2wpkh,
    txid_hex,
)

NO_SUCH_TX = (
    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
)


node, rpc, key, faucet = node_rig("node-reorg", seed="reorg-miner", txindex=True)


def test_invalidate_returns_tx_to_mempool_and_reconsider_reconnects(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    txid = txid_hex(tx)
    rpc.send_raw_transaction(hex_of(tx))
    [block] = rpc.generate_to_address(1, key.address)
    later = rpc.generate_to_address(2, key.address)
    height = rpc.get_block_count()
    assert rpc.get_raw_transaction(txid, True)["blockhash"] == block

    rpc.call("invalidateblock", block)
    assert rpc.get_block_count() == height - 3
    assert rpc.get_raw_mempool() == [txid]
    assert "blockhash" not in rpc.get_raw_transaction(txid, True)
    assert rpc.get_tx_out(coin[0], 0, include_mempool=False) is not None  # coin restored
    assert rpc.get_block_header(later[-1])["confirmations"] == -1
    tips = {t["hash"]: t["status"] for t in rpc.call("getchaintips")}
    assert tips[later[-1]] == "invalid"

    rpc.call("reconsiderblock", block)
    assert rpc.get_block_count() == height and rpc.get_best_block_hash() == later[-1]
    assert rpc.get_raw_mempool() == []
    assert rpc.get_raw_transaction(txid, True)["confirmations"] == 3


def test_conflicting_spend_mined_on_new_branch_evicts_mempool_tx(
    node: NodeProcess, rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    payee, thief = Key.from_seed("payee"), Key.from_seed("double-spender")
    tx = spend_p2wpkh(key, coin, [(payee.script, coin[2] - FEE)])
    txid = txid_hex(tx)
    rpc.send_raw_transaction(hex_of(tx))
    [block] = rpc.generate_to_address(1, key.address)
    old_tip_height = rpc.get_block_count()

    rpc.call("invalidateblock", block)
    assert rpc.get_raw_mempool() == [txid]
    conflict = spend_p2wpkh(key, coin, [(thief.script, coin[2] - 2 * FEE)])
    mined = rpc.call("generateblock", key.address, [hex_of(conflict)])["hash"]
    rpc.generate_to_address(1, key.address)  # the new branch is now longer

    assert rpc.get_raw_mempool() == []
    assert_rpc_error(rpc.get_raw_transaction, -5, NO_SUCH_TX, txid)
    assert rpc.get_raw_transaction(txid_hex(conflict), True)["blockhash"] == mined
    assert rpc.get_block_count() == old_tip_height + 1

    # Reconsidering the old block does not bring it back: the new branch has more work.
    rpc.call("reconsiderblock", block)
    assert rpc.get_raw_transaction(txid_hex(conflict), True)["blockhash"] == mined
    tips = {t["hash"]: t for t in rpc.call("getchaintips")}
    assert tips[block]["status"] == "valid-fork" and tips[block]["branchlen"] == 1

    # The chosen branch and the stored fork survive a restart.
    best = rpc.get_best_block_hash()
    assert node.stop() == 0
    node.start()
    rpc = node.rpc()
    assert rpc.get_best_block_hash() == best
    assert rpc.get_block_header(block)["confirmations"] == -1


def test_reorg_drops_spends_of_coinbases_that_become_immature(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    tip = rpc.get_block_count()
    height = tip - 99  # exactly mature for the next block
    block = rpc.get_block(rpc.get_block_hash(height), 2)
    cb = block["tx"][0]
    coin = (cb["txid"], 0, int(cb["vout"][0]["value"] * 100_000_000))
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    rpc.send_raw_transaction(hex_of(tx))
    tip_hash = rpc.get_block_hash(tip)
    rpc.call("invalidateblock", tip_hash)
    assert rpc.get_raw_mempool() == []  # its coinbase is one block short of maturity again
    rpc.call("reconsiderblock", tip_hash)
    assert rpc.get_best_block_hash() == tip_hash
