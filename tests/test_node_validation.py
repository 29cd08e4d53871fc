"""The simulated node judges transactions as Bitcoin Core does: each rejection is checked
for Core's error code and message (maturity, double spends, signatures, standardness, fees).

Transactions are built and signed here with python-bitcointx and coincurve.
"""

from __future__ import annotations

import pytest

from custody.chain import BitcoinRPC
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    hex_of,
    node_rig,
    p2wpkh_digest,
    p2wsh_digest,
    p2wsh_multisig,
    rejected,
    spend_p2wpkh,
    txid_hex,
    unsigned_tx,
    with_witness,
)

EVAL_FALSE = (
    "mandatory-script-verify-flag-failed (Script evaluated without error but finished with a "
    "false/empty top stack element)"
)


node, rpc, key, faucet = node_rig("node-validation", seed="validation-miner", blocks=110)


def test_immature_coinbase_rejected_then_accepted_at_maturity(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin, depth = faucet.immature_coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    assert rejected(rpc, hex_of(tx)) == (
        -26,
        f"bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth {depth}",
    )
    [result] = rpc.test_mempool_accept([hex_of(tx)])
    assert (result.allowed, result.reject_reason) == (False, "bad-txns-premature-spend-of-coinbase")
    rpc.generate_to_address(1, key.address)
    assert rpc.send_raw_transaction(hex_of(tx)) == txid_hex(tx)


def test_double_spend_in_mempool_and_after_mining(
    rpc: BitcoinRPC, faucet: Faucet, key: Key
) -> None:
    coin = faucet.coin()
    other = Key.from_seed("someone-else")
    first = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    second = spend_p2wpkh(key, coin, [(other.script, coin[2] - 2 * FEE)])
    assert rpc.send_raw_transaction(hex_of(first)) == txid_hex(first)
    # Sending the same transaction again is not an error (Core: already in mempool).
    assert rpc.send_raw_transaction(hex_of(first)) == txid_hex(first)
    assert rejected(rpc, hex_of(second)) == (-26, "txn-mempool-conflict")
    rpc.generate_to_address(1, key.address)
    assert rejected(rpc, hex_of(second)) == (-25, "bad-txns-inputs-missingorspent")
    assert rejected(rpc, hex_of(first)) == (-27, "Transaction outputs already in utxo set")
    [result] = rpc.test_mempool_accept([hex_of(second)])
    assert (result.allowed, result.reject_reason) == (False, "missing-inputs")


def test_unknown_input_is_missing(rpc: BitcoinRPC, key: Key) -> None:
    tx = spend_p2wpkh(key, ("11" * 32, 0, 100_000), [(key.script, 50_000)])
    assert rejected(rpc, hex_of(tx)) == (-25, "bad-txns-inputs-missingorspent")


def test_tampered_signature_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    sig = bytearray(tx.wit.vtxinwit[0].scriptWitness.stack[0])
    sig[10] ^= 0x01  # inside r: still valid DER, wrong signature
    bad = with_witness(tx, [[bytes(sig), key.pub]])
    assert rejected(rpc, hex_of(bad)) == (-26, EVAL_FALSE)


def test_changed_output_after_signing_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    thief = Key.from_seed("thief")
    changed = unsigned_tx([(coin[0], coin[1])], [(thief.script, coin[2] - FEE)])
    bad = with_witness(changed, [list(tx.wit.vtxinwit[0].scriptWitness.stack)])
    assert rejected(rpc, hex_of(bad)) == (-26, EVAL_FALSE)


def test_wrong_key_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    other = Key.from_seed("not-the-owner")
    tx = unsigned_tx([(coin[0], coin[1])], [(key.script, coin[2] - FEE)])
    sig = other.sign(p2wpkh_digest(tx, 0, key, coin[2]))
    bad = with_witness(tx, [[sig, other.pub]])
    assert rejected(rpc, hex_of(bad)) == (
        -26,
        "mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)",
    )


def test_high_s_rejected_as_non_mandatory(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], high_s=True)
    assert rejected(rpc, hex_of(tx)) == (
        -26,
        "non-mandatory-script-verify-flag-failed "
        "(Non-canonical signature: S value is unnecessarily high)",
    )
    low = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    assert rpc.send_raw_transaction(hex_of(low)) == txid_hex(low)


def test_dust_output_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE - 293), (key.script, 293)])
    assert rejected(rpc, hex_of(tx)) == (-26, "dust")
    ok = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE - 294), (key.script, 294)])
    [result] = rpc.test_mempool_accept([hex_of(ok)])
    assert result.allowed is True


def test_fee_below_min_relay_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - 50)])
    vsize = rpc.decode_raw_transaction(hex_of(tx))["vsize"]
    assert rejected(rpc, hex_of(tx)) == (-26, f"min relay fee not met, 50 < {vsize}")


def test_outputs_above_inputs_rejected(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] + 1)])
    assert rejected(rpc, hex_of(tx)) == (
        -26,
        "bad-txns-in-belowout, value in (50.00) < value out (50.00000001)",
    )


def test_max_fee_rate_enforced(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] // 2)])
    code, message = rejected(rpc, hex_of(tx))
    assert (code, message) == (
        -25,
        "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
    )
    [result] = rpc.test_mempool_accept([hex_of(tx)])
    assert (result.allowed, result.reject_reason) == (False, "max-fee-exceeded")


def test_rbf_replacement_rules(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    original = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)], sequence=0xFFFFFFFD)
    rpc.send_raw_transaction(hex_of(original))
    assert rpc.get_mempool_entry(txid_hex(original))["bip125-replaceable"] is True
    cheaper = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE + 1)], sequence=0xFFFFFFFD)
    code, message = rejected(rpc, hex_of(cheaper))
    assert code == -26 and message.startswith(
        f"insufficient fee, rejecting replacement {txid_hex(cheaper)}; new feerate"
    )
    better = spend_p2wpkh(key, coin, [(key.script, coin[2] - 2 * FEE)], sequence=0xFFFFFFFD)
    assert rpc.send_raw_transaction(hex_of(better)) == txid_hex(better)
    assert rpc.get_raw_mempool().count(txid_hex(original)) == 0


# ---------------------------------------------------------------- 2-of-3 P2WSH multisig


@pytest.fixture(scope="module")
def multisig() -> tuple[object, object, list[Key]]:
    keys = [Key.from_seed(f"cosigner-{i}") for i in range(3)]
    return p2wsh_multisig(keys)


def fund_multisig(
    rpc: BitcoinRPC, faucet: Faucet, key: Key, multisig: tuple[object, object, list[Key]]
) -> tuple[str, int, int]:
    _, script, _ = multisig
    coin = faucet.coin()
    funding = spend_p2wpkh(key, coin, [(script, coin[2] - FEE)])
    rpc.send_raw_transaction(hex_of(funding))
    rpc.generate_to_address(1, key.address)
    return txid_hex(funding), 0, coin[2] - FEE


def multisig_spend(
    coin: tuple[str, int, int],
    multisig: tuple[object, object, list[Key]],
    signers: list[int],
    *,
    dummy: bytes = b"",
    to: Key | None = None,
) -> tuple[object, list[bytes]]:
    witness_script, _, ordered = multisig
    dest = to or Key.from_seed("merchant")
    tx = unsigned_tx([(coin[0], coin[1])], [(dest.script, coin[2] - FEE)])
    digest = p2wsh_digest(tx, 0, witness_script, coin[2])  # type: ignore[arg-type]
    sigs = [ordered[i].sign(digest) for i in signers]
    return tx, [dummy, *sigs, bytes(witness_script)]  # type: ignore[arg-type]


def test_multisig_rejections_then_valid_spend_mined(
    rpc: BitcoinRPC, faucet: Faucet, key: Key, multisig: tuple[object, object, list[Key]]
) -> None:
    coin = fund_multisig(rpc, faucet, key, multisig)

    tx, stack = multisig_spend(coin, multisig, [1, 0])  # swapped order
    assert rejected(rpc, hex_of(with_witness(tx, [stack]))) == (-26, EVAL_FALSE)

    tx, stack = multisig_spend(coin, multisig, [0])  # one signature
    assert rejected(rpc, hex_of(with_witness(tx, [stack]))) == (
        -26,
        "mandatory-script-verify-flag-failed (Operation not valid with the current stack size)",
    )

    tx, stack = multisig_spend(coin, multisig, [0, 2], dummy=b"\x01")  # NULLDUMMY
    assert rejected(rpc, hex_of(with_witness(tx, [stack]))) == (
        -26,
        "mandatory-script-verify-flag-failed (Dummy CHECKMULTISIG argument must be zero)",
    )

    tx, stack = multisig_spend(coin, multisig, [0, 2])
    tampered = list(stack)
    sig = bytearray(tampered[2])
    sig[10] ^= 0x01
    tampered[2] = bytes(sig)
    assert rejected(rpc, hex_of(with_witness(tx, [tampered]))) == (-26, EVAL_FALSE)

    good = with_witness(tx, [stack])
    assert rpc.send_raw_transaction(hex_of(good)) == txid_hex(good)
    [block_hash] = rpc.generate_to_address(1, key.address)
    assert txid_hex(good) in rpc.get_block(block_hash, 1)["tx"]
    confirmed = rpc.get_raw_transaction(txid_hex(good), True, block_hash)
    assert confirmed["blockhash"] == block_hash and confirmed["confirmations"] == 1
    assert rejected(rpc, hex_of(good)) == (-27, "Transaction outputs already in utxo set")
