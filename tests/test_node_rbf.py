"""The simulated node's mempool follows Core's BIP125 replacement and chain-limit rules.

What a fee-bumping wallet and a deposit watcher meet on a real node: only signalling
transactions are replaceable; a replacement pays more in absolute fee and in fee rate and adds
no new unconfirmed input; the replaced transaction's descendants leave with it; a block that
confirms a conflicting spend evicts the pool's spend and its children; chains stop at 25.
Transactions are built with python-bitcointx (tests/node_fixtures.py), never with wallet_core.
"""

from __future__ import annotations

from bitcointx.core import CTransaction

from custody.chain import BitcoinRPC
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    hex_of,
    node_rig,
    p2wpkh_digest,
    rejected,
    spend_p2wpkh,
    txid_hex,
    unsigned_tx,
    with_witness,
)

RBF = 0xFFFFFFFD
FINAL = 0xFFFFFFFF


node, rpc, key, faucet = node_rig("node-rbf", seed="rbf-miner", blocks=110)


def send(rpc: BitcoinRPC, tx: object) -> str:
    return rpc.send_raw_transaction(hex_of(tx))


def pool(rpc: BitcoinRPC) -> set[str]:
    return set(rpc.get_raw_mempool())


def pay_back(
    rpc: BitcoinRPC, key: Key, coin: tuple[str, int, int], *, sequence: int = FINAL
) -> tuple[CTransaction, tuple[str, int, int]]:
    """Send `coin` back to `key` less FEE; the transaction, and its output as the next coin."""
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], sequence=sequence)
    send(rpc, tx)
    return tx, (txid_hex(tx), 0, coin[2] - FEE)


def test_non_signalling_transaction_is_not_replaceable(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    original = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], sequence=FINAL)
    send(rpc, original)
    assert rpc.get_mempool_entry(txid_hex(original))["bip125-replaceable"] is False
    richer = spend_p2wpkh(key, coin, [(key.script, coin[2] - 5 * FEE)], sequence=RBF)
    assert rejected(rpc, hex_of(richer)) == (-26, "txn-mempool-conflict")
    assert txid_hex(original) in pool(rpc) and txid_hex(richer) not in pool(rpc)


def test_replacement_must_pay_more_absolute_fee_than_it_evicts(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    parent, child_coin = pay_back(rpc, key, coin, sequence=RBF)
    child = spend_p2wpkh(key, child_coin, [(key.script, child_coin[2] - 20 * FEE)])
    send(rpc, child)
    # Higher fee rate than the parent alone, but less than parent + child together.
    small = spend_p2wpkh(key, coin, [(key.script, coin[2] - 3 * FEE)], sequence=RBF)
    code, message = rejected(rpc, hex_of(small))
    assert code == -26
    assert message == (
        f"insufficient fee, rejecting replacement {txid_hex(small)}, less fees than "
        "conflicting txs; 0.0003 < 0.0021"
    )
    assert {txid_hex(parent), txid_hex(child)} <= pool(rpc)


def test_replacement_evicts_the_original_and_its_descendants(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    parent, child_coin = pay_back(rpc, key, coin, sequence=RBF)
    child, grandchild_coin = pay_back(rpc, key, child_coin)
    grandchild, _ = pay_back(rpc, key, grandchild_coin)
    bump = spend_p2wpkh(key, coin, [(key.script, coin[2] - 5 * FEE)], sequence=RBF)
    assert send(rpc, bump) == txid_hex(bump)
    now = pool(rpc)
    assert txid_hex(bump) in now
    assert not {txid_hex(parent), txid_hex(child), txid_hex(grandchild)} & now
    [block] = rpc.generate_to_address(1, key.address)
    assert rpc.get_raw_transaction(txid_hex(bump), True, block)["confirmations"] == 1


def test_replacement_may_not_add_an_unconfirmed_input(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin, other = faucet.coin(), faucet.coin()
    original = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], sequence=RBF)
    unrelated = spend_p2wpkh(key, other, [(key.script, other[2] - FEE)], sequence=RBF)
    send(rpc, original)
    send(rpc, unrelated)
    inputs = [(coin[0], coin[1]), (txid_hex(unrelated), 0)]
    values = [coin[2], other[2] - FEE]
    tx = unsigned_tx(inputs, [(key.script, sum(values) - 10 * FEE)], RBF)
    sigs = [key.sign(p2wpkh_digest(tx, i, key, v)) for i, v in enumerate(values)]
    replacement = with_witness(tx, [[s, key.pub] for s in sigs])
    code, message = rejected(rpc, hex_of(replacement))
    assert code == -26
    assert message.startswith(
        f"replacement-adds-unconfirmed, replacement {txid_hex(replacement)} adds unconfirmed"
    )
    assert txid_hex(original) in pool(rpc)


def test_block_with_a_conflicting_spend_evicts_the_pool_spend_and_its_children(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    pooled, child_coin = pay_back(rpc, key, coin)
    child, _ = pay_back(rpc, key, child_coin)
    elsewhere = Key.from_seed("rbf-elsewhere")
    conflict = spend_p2wpkh(key, coin, [(elsewhere.script, coin[2] - 2 * FEE)])
    block = rpc.call("generateblock", key.address, [hex_of(conflict)])["hash"]
    now = pool(rpc)
    assert not {txid_hex(pooled), txid_hex(child)} & now
    assert rpc.get_raw_transaction(txid_hex(conflict), True, block)["confirmations"] == 1


def test_chain_of_unconfirmed_transactions_stops_at_25(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    chain = []
    for _ in range(25):
        tx, coin = pay_back(rpc, key, coin, sequence=RBF)
        chain.append(tx)
    assert rpc.get_mempool_entry(txid_hex(chain[-1]))["ancestorcount"] == 25
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    code, message = rejected(rpc, hex_of(tx))
    assert (code, message) == (
        -26,
        "too-long-mempool-chain, too many unconfirmed ancestors [limit: 25]",
    )
    # Replacing the tip does not count the tip itself as an ancestor.
    last = chain[-1]
    prev = chain[-2]
    bump_coin = (txid_hex(prev), 0, coin[2] + FEE)
    bump = spend_p2wpkh(key, bump_coin, [(key.script, bump_coin[2] - 3 * FEE)], sequence=RBF)
    assert send(rpc, bump) == txid_hex(bump)
    assert txid_hex(last) not in pool(rpc)
    rpc.generate_to_address(1, key.address)
    assert not pool(rpc)


def test_descendants_of_one_transaction_stop_at_25(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    share = (coin[2] - FEE) // 30
    fan = spend_p2wpkh(key, coin, [(key.script, share)] * 30, sequence=RBF)
    send(rpc, fan)
    for n in range(24):
        child = spend_p2wpkh(key, (txid_hex(fan), n, share), [(key.script, share - FEE)])
        send(rpc, child)
    extra = spend_p2wpkh(key, (txid_hex(fan), 24, share), [(key.script, share - FEE)])
    assert rejected(rpc, hex_of(extra)) == (
        -26,
        f"too-long-mempool-chain, too many descendants for tx {txid_hex(fan)} [limit: 25]",
    )
    rpc.generate_to_address(1, key.address)
    assert send(rpc, extra) == txid_hex(extra)
