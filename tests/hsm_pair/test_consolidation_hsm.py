"""Consolidation through the real HSM pair: co-signed without any V-device signature when
every output is the account's own change and the fee rate is within the consolidation policy,
and mined; an output paying anyone else is refused by the hot side (904) and, asked directly,
by the cold side, which freezes the account (710, tests/test_consolidation_cold.py); a fee
rate above the consolidation policy is refused without freezing (712).
"""

from __future__ import annotations

from decimal import Decimal

from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient
from tests.hsm_fixtures import Coin, HsmPair, build_send_psbt, funded_coin, random_address
from tests.hsm_pair.rig import COIN, FEE, Account, refused
from wallet_core.psbt import Psbt
from wallet_core.wallets import RECEIVE

HOT_BAD_REQUEST = 904


def coins(node: BitcoinRPC, acct: Account, n: int) -> list[Coin]:
    found = []
    for i in range(n):
        [block] = node.generate_to_address(1, acct.wallet.address(i, RECEIVE))
        coinbase = node.get_block(block, 2)["tx"][0]
        value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
        raw = bytes.fromhex(node.get_raw_transaction(coinbase["txid"], False, block))
        found.append(Coin(coinbase["txid"], 0, value, RECEIVE, i, raw))
    node.generate_to_address(100, random_address())
    return found


def test_consolidation_is_cosigned_and_mined(
    pair: HsmPair, client: HotHsmClient, node: BitcoinRPC
) -> None:
    acct = Account(client, pair)
    inputs = coins(node, acct, 3)
    total = sum(c.value for c in inputs)
    psbt = build_send_psbt(acct.wallet, inputs, [], change=(5, total - 2_000))
    signed = Psbt.from_base64(client.sign_consolidation(acct.id, psbt.to_base64()))
    signed.finalize()
    txid = node.send_raw_transaction(signed.extract_hex())
    [block] = node.generate_to_address(1, random_address())
    tx = node.get_raw_transaction(txid, True, block)
    assert tx["confirmations"] == 1 and len(tx["vin"]) == 3 and len(tx["vout"]) == 1
    assert tx["vout"][0]["scriptPubKey"]["hex"] == acct.wallet.script_pubkey(5, 1).hex()
    assert [e for e in pair.audit() if e["event"] == "consolidate"][-1]["txid"] == txid


def test_consolidation_refusals(pair: HsmPair, client: HotHsmClient, node: BitcoinRPC) -> None:
    acct = Account(client, pair)
    inputs = [
        funded_coin(acct.wallet, 1_000_000, RECEIVE, 1, 0, f"{acct.id}/a"),
        funded_coin(acct.wallet, 500_000, RECEIVE, 2, 1, f"{acct.id}/b"),
    ]
    # a fee rate far above the consolidation policy (10 sat/vB): refused, not frozen
    psbt = build_send_psbt(acct.wallet, inputs, [], change=(1, 1_500_000 - 50_000))
    e = refused(client.sign_consolidation, FEE, acct.id, psbt.to_base64())
    assert "consolidation policy" in e.message
    # an output that is not the account's change: the hot side refuses it itself...
    pay = [(random_address(), 100_000)]
    psbt = build_send_psbt(acct.wallet, inputs, pay, change=(1, 1_500_000 - 102_000))
    refused(client.sign_consolidation, HOT_BAD_REQUEST, acct.id, psbt.to_base64())
    assert acct.id not in [a for a, _ in client.cold_status()["frozen"]]
