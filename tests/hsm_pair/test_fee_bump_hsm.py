"""Fee bumps through the real HSM pair: the cold HSM co-signs a second transaction under a
`user_tx_no` only as a BIP125 replacement of the one it signed (same signed payments, one of
its inputs, every input signalling, at least 1 sat/vB more fee, within policy), with the
V-device's original `vc_code`; the node takes the replacement and evicts the original, and
only one of them is ever mined. A replacement paying too little is refused (707); anything else
under a used number is a reuse, refused with a freeze (707). The V-device learns the new txid:
the cold HSM texts its number the identity-signed `CC:SEND_SIGNED:<account>:<txid>:<no>`.
"""

from __future__ import annotations

from decimal import Decimal

from cc_common.sms.modem import GsmModem
from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient
from tests.harness import wait_until
from tests.hsm_fixtures import PHONES, Coin, HsmPair, build_send_psbt, psbt_input, random_address
from tests.hsm_pair.rig import COIN, REUSED, Account, refused
from wallet_core.chaincloud import verify_send_statement
from wallet_core.psbt import Psbt
from wallet_core.wallets import RECEIVE


def funded_coin(node: BitcoinRPC, acct: Account) -> Coin:
    [block] = node.generate_to_address(1, acct.wallet.address(0, RECEIVE))
    node.generate_to_address(100, random_address())
    coinbase = node.get_block(block, 2)["tx"][0]
    value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
    raw = bytes.fromhex(node.get_raw_transaction(coinbase["txid"], False, block))
    return Coin(coinbase["txid"], 0, value, RECEIVE, 0, raw)


def vdevice_texts(pair: HsmPair, prefix: str) -> list[str]:
    """The texts starting with `prefix` that the V-device's modem received (read off its SIM)."""
    modems = pair.d.config.section("firmware_sim").list("modems")
    (entry,) = [e for e in modems if e["number"] == PHONES["vdevice_phone"]]
    modem = GsmModem(str(pair.d.data_dir / entry["link"]), name="vdevice", poll_interval=0.1)
    got: list[str] = []
    try:
        return wait_until(
            lambda: (
                [t for t in got if t.startswith(prefix)]
                or got.extend(m.text for m in modem.wait_for_messages(0.5))
            ),
            30,
            f"{prefix!r} at the V-device's number",
        )
    finally:
        modem.close()


def send_psbt(acct: Account, coins: list[Coin], payments: list[tuple[str, int]], fee: int) -> Psbt:
    total = sum(c.value for c in coins)
    change = (0, total - sum(v for _, v in payments) - fee)
    return build_send_psbt(acct.wallet, coins, payments, change=change)


def final_hex(client: HotHsmClient, acct: Account, psbt: Psbt, payments, no: str) -> str:
    signed = Psbt.from_base64(client.sign_send(**acct.params(psbt, payments, no)))
    signed.finalize()
    return signed.extract_hex()


def test_replacement_with_more_fee_is_cosigned_and_replaces(
    pair: HsmPair, client: HotHsmClient, node: BitcoinRPC
) -> None:
    acct = Account(client, pair)
    coin = funded_coin(node, acct)
    payments = [(random_address(), 10_000_000)]
    original = send_psbt(acct, [coin], payments, fee=500)
    first = node.send_raw_transaction(final_hex(client, acct, original, payments, "bump-1"))
    bumped = send_psbt(acct, [coin], payments, fee=5_000)
    second = node.send_raw_transaction(final_hex(client, acct, bumped, payments, "bump-1"))
    assert second == bumped.txid != first
    pool = node.get_raw_mempool()
    assert second in pool and first not in pool
    # the original again (a stale retry) is not a replacement of the bump: refused
    refused(client.sign_send, REUSED, **acct.params(original, payments, "bump-1"))
    # and the bump again is the same answer (a retry after a crash)
    assert final_hex(client, acct, bumped, payments, "bump-1")
    # the V-device's number gets the cold HSM's signed word on the new txid
    prefix = f"CC:SEND_SIGNED:{acct.id}:{second}:bump-1:"
    (text,) = vdevice_texts(pair, prefix)
    sig = text.rsplit(":", 1)[1]
    statement = {"state": "signed", "txid": second, "signature": sig}
    cold_identity = bytes.fromhex(acct.prov.cold_identity)
    verdict = verify_send_statement(cold_identity, acct.id, "bump-1", statement)
    assert verdict is not None and verdict.txid == second
    [block] = node.generate_to_address(1, random_address())
    assert node.get_raw_transaction(second, True, block)["confirmations"] == 1


def test_what_is_not_a_replacement_is_refused(
    pair: HsmPair, client: HotHsmClient, node: BitcoinRPC
) -> None:
    acct = Account(client, pair)
    coin, other = funded_coin(node, acct), funded_coin(node, acct)
    payments = [(random_address(), 10_000_000)]
    original = send_psbt(acct, [coin], payments, fee=1_000)
    final_hex(client, acct, original, payments, "nr-1")
    # a replacement, but less than 1 sat/vB more fee: refused, the account stays live
    e = refused(
        client.sign_send,
        REUSED,
        **acct.params(send_psbt(acct, [coin], payments, fee=1_050), payments, "nr-1"),
    )
    assert "must pay at least" in e.message and "frozen" not in e.message
    # the same payments from another coin: it could confirm beside the first, a reuse: freeze
    e = refused(
        client.sign_send,
        REUSED,
        **acct.params(send_psbt(acct, [other], payments, fee=5_000), payments, "nr-1"),
    )
    assert "frozen" in e.message

    # not signalling BIP125: not a replacement either
    acct = Account(client, pair)
    coin = funded_coin(node, acct)
    original = send_psbt(acct, [coin], payments, fee=1_000)
    final_hex(client, acct, original, payments, "nr-2")
    bumped = send_psbt(acct, [coin], payments, fee=5_000)
    final_input = psbt_input(acct.wallet, coin, sequence=0xFFFFFFFF)
    final = Psbt.create([final_input], bumped.outputs)
    e = refused(client.sign_send, REUSED, **acct.params(final, payments, "nr-2"))
    assert "frozen" in e.message
