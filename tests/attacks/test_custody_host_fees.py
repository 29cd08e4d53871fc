"""A hacked custody host against the HSM pair: fee drain, user_tx_no reuse, shape, fee policy.

The attacker holds custody's config and database and talks to hsm-hot's RPC directly
(`custody_host.HostAttack`), with real processes: firmware-sim (serial line and carrier),
`hsm-cold serve`, `hsm-hot serve` and the regtest node. Each test asserts the refusal code,
that nothing new reached the node (tip and mempool), the freeze where the design says so, and
the alert (recorded for custody and texted to the operator).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from custody.hsm_client import HsmRefused
from tests.attacks.custody_host import HostAttack, Victim, split_psbt
from tests.harness import Deployment
from tests.hsm_fixtures import Coin, VDevice, build_send_psbt, random_address, settlement_descriptor
from wallet_core.addresses import address_to_script
from wallet_core.bip32 import parse_xpub
from wallet_core.fees import estimate_vsize
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.script import ScriptType
from wallet_core.wallets import CHANGE, RECEIVE, AccountKey, ColdWallet, bip84_account_path

COIN = 100_000_000
# the cold HSM's codes (hsm_cold/errors.py) and the hot HSM's (hsm_hot/errors.py)
FROZEN, FORGED, REUSED = 703, 706, 707
FEE, PREV_TX_REQUIRED, AMOUNT_MISMATCH = 712, 730, 731
FEE_RATE, DAILY_FEE, BAD_VERSION, BAD_LOCKTIME, BAD_SEQUENCE, BEYOND_GAP = (
    733,
    734,
    735,
    736,
    737,
    738,
)
HOT_BAD_REQUEST, HOT_FEE = 904, 920
COLD_MAX_FEE, COLD_MAX_RATE, COLD_MAX_DAY = 20_000, 100, 50_000


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostAttack]:
    d = Deployment(
        tmp_path_factory.mktemp("custody-host"),
        config={
            "hsm_hot": {
                "max_requests_per_minute": 10_000,
                "max_fee_sat": 30_000,
                "max_fee_rate": 150,
                "max_fee_per_day_sat": 1_000_000,
            },
            "hsm_cold": {
                "max_fee_sat": COLD_MAX_FEE,
                "max_fee_rate": COLD_MAX_RATE,
                "max_fee_per_day_sat": COLD_MAX_DAY,
            },
        },
    )
    with d.serving():
        yield HostAttack(d).start()


def vsize(n_inputs: int, scripts: list[bytes]) -> int:
    return estimate_vsize([ScriptType.P2WSH] * n_inputs, scripts)


def concurrently(calls: list[Any]) -> list[Any]:
    """Run each call in its own thread, released together; their results or exceptions."""
    gate = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(n: int) -> None:
        gate.wait()
        try:
            results[n] = calls[n]()
        except Exception as exc:  # the refusal is the result
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# -- the fee drain by amount splitting (issue: "What breaks today" 1) ----------------------------


def test_fee_drain_split_amounts_concurrently(host: HostAttack) -> None:
    """Two concurrent `sign_send` for ONE genuine request, each stating one input truthfully
    (with its funding transaction) and the other as 1 sat: the hot HSM serializes them, the
    cold HSM verifies amounts itself. No signature comes back; the account is frozen."""
    victim = host.victim()
    coins = [host.hot_coin(victim, 0), host.hot_coin(victim, 1)]
    pay = [(random_address(), 1 * COIN)]
    genuine = victim.genuine(pay, "drain-1")
    before = host.chain()
    true0, true1 = coins[0].value, coins[1].value
    # the change makes the fee look tiny over the stated amounts; the real fee is ~ true1
    change = (0, true0 + 1 - 1 * COIN - 5_000)
    a = split_psbt(victim.wallet, coins, [true0, 1], pay, change, prev_txs=[True, False])
    change_b = (0, true1 + 1 - COIN - 5_000)
    b = split_psbt(victim.wallet, coins, [1, true1], pay, change_b, prev_txs=[False, True])
    results = concurrently(
        [
            lambda: host.hot.sign_send(**genuine, psbt=a.to_base64()),
            lambda: host.hot.sign_send(**genuine, psbt=b.to_base64()),
        ]
    )
    assert all(isinstance(r, HsmRefused) for r in results), results
    # whichever ran first taught the cold HSM one funding transaction (730); the other
    # then lied about exactly that outpoint (731)
    assert sorted(r.code for r in results) == [PREV_TX_REQUIRED, AMOUNT_MISMATCH]
    assert host.chain() == before
    assert host.hot_signed("drain-") == []
    host.assert_frozen_and_alerted(victim, "amount mismatch")
    # frozen: even the honest request is refused now, until the cold console unfreezes
    honest = build_send_psbt(victim.wallet, coins, pay, change=(0, true0 + true1 - COIN - 9_000))
    host.refused(FROZEN, "sign_send", **genuine, psbt=honest.to_base64())


def test_fee_drain_lying_amount_with_funding_tx_stops_at_the_hot_hsm(host: HostAttack) -> None:
    """The lie next to the funding transaction that refutes it: refused by the hot HSM."""
    victim = host.victim()
    coins = [host.hot_coin(victim, 0), host.hot_coin(victim, 1)]
    pay = [(random_address(), COIN)]
    psbt = split_psbt(
        victim.wallet,
        coins,
        [coins[0].value, 1],
        pay,
        (0, coins[0].value + 1 - COIN - 5_000),
        prev_txs=[True, True],
    )
    before = host.chain()
    err = host.refused(
        HOT_BAD_REQUEST, "sign_send", **victim.genuine(pay, "drain-2"), psbt=psbt.to_base64()
    )
    assert "input 1: stated as 1 sat" in err.message
    assert host.chain() == before and host.hot_signed("drain-2") == []


@pytest.mark.slow
def test_fee_drain_same_amounts_concurrently_signs_once(host: HostAttack) -> None:
    """Eight concurrent copies of one honest request: one signing, eight identical answers,
    one transaction on the node. Retries cannot produce a second set of signatures."""
    victim = host.victim()
    coins = [host.hot_coin(victim, 0), host.hot_coin(victim, 1)]
    host.mature()
    pay = [(random_address(), COIN)]
    total = sum(c.value for c in coins)
    scripts = [address_to_script(pay[0][0], Network.REGTEST), victim.wallet.script_pubkey(0, 1)]
    fee = COLD_MAX_RATE * vsize(2, scripts) // 2
    psbt = build_send_psbt(victim.wallet, coins, pay, change=(0, total - COIN - fee))
    genuine = victim.genuine(pay, "same-1")
    results = concurrently(
        [lambda: host.hot.sign_send(**genuine, psbt=psbt.to_base64()) for _ in range(8)]
    )
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1
    assert host.hot_signed("same-1") == ["same-1"]
    signed = Psbt.from_base64(results[0])
    signed.finalize()
    before = host.chain()
    txid = host.node.send_raw_transaction(signed.extract_hex())
    assert host.chain().mempool == tuple(sorted({*before.mempool, txid}))
    assert host.frozen_reason(victim) is None


# -- one user_tx_no, one signing -----------------------------------------------------------------


def test_reused_user_tx_no_for_another_transaction_freezes(host: HostAttack) -> None:
    """After a genuine signing, the same `vc_code` for another transaction that is no
    replacement of it (it spends another coin, so both could confirm and pay twice): refused,
    frozen, alerted. A replacement (same payments, one of the same inputs, more fee within
    policy) is a fee bump and is co-signed: `test_fee_bump_hsm.py`."""
    victim = host.victim()
    coin, second = host.hot_coin(victim, 0), host.hot_coin(victim, 1)
    pay = [(random_address(), COIN)]
    genuine = victim.genuine(pay, "reuse-1")
    psbt = build_send_psbt(victim.wallet, [coin], pay, change=(0, coin.value - COIN - 5_000))
    first = host.hot.sign_send(**genuine, psbt=psbt.to_base64())
    assert host.hot.sign_send(**genuine, psbt=psbt.to_base64()) == first  # a retry
    before = host.chain()
    other = build_send_psbt(victim.wallet, [second], pay, change=(0, second.value - COIN - 5_000))
    err = host.refused(REUSED, "sign_send", **genuine, psbt=other.to_base64())
    assert "'reuse-1' was co-signed for" in err.message
    assert host.chain() == before
    assert host.hot_signed("reuse-1") == ["reuse-1"]
    host.assert_frozen_and_alerted(victim, "user_tx_no reused")


# -- strict transaction shape --------------------------------------------------------------------


def shaped(victim: Victim, coin: Coin, pay: list[tuple[str, int]], **shape: Any) -> Psbt:
    """The honest send, with a version, nLockTime or input sequence of the attacker's choice."""
    w = victim.wallet
    sequence = shape.pop("sequence", 0xFFFFFFFD)
    inputs = [
        PsbtInput(
            coin.txid,
            coin.vout,
            coin.value,
            w.script_pubkey(coin.index, RECEIVE),
            w.witness_script(coin.index, RECEIVE),
            w.origins(coin.index, RECEIVE),
            sequence=sequence,
            prev_tx=coin.prev_tx,
        )
    ]
    outputs = [
        PsbtOutput(address_to_script(pay[0][0], Network.REGTEST), pay[0][1]),
        PsbtOutput(
            w.script_pubkey(0, CHANGE),
            coin.value - pay[0][1] - 5_000,
            w.origins(0, CHANGE),
            w.witness_script(0, CHANGE),
        ),
    ]
    return Psbt.create(inputs, outputs, **shape)


@pytest.mark.parametrize(
    ("shape", "code", "words"),
    [
        ({"locktime": 5_000_000}, BAD_LOCKTIME, "bad nLockTime"),  # unminable for decades
        ({"sequence": 0x0000FFFF}, BAD_SEQUENCE, "bad input sequence"),  # BIP68 relative lock
        ({"version": 1}, BAD_VERSION, "bad transaction version"),
    ],
    ids=["locktime", "sequence", "version"],
)
def test_transaction_shape_that_delays_a_send_freezes(
    host: HostAttack, shape: dict[str, Any], code: int, words: str
) -> None:
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    pay = [(random_address(), COIN)]
    before = host.chain()
    psbt = shaped(victim, coin, pay, **shape)
    host.refused(code, "sign_send", **victim.genuine(pay, "shape-1"), psbt=psbt.to_base64())
    assert host.chain() == before and host.hot_signed("shape-1") == []
    host.assert_frozen_and_alerted(victim, words)


def test_change_parked_beyond_the_gap_is_refused(host: HostAttack) -> None:
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    pay = [(random_address(), COIN)]
    psbt = build_send_psbt(victim.wallet, [coin], pay, change=(50_000, coin.value - COIN - 5_000))
    before = host.chain()
    err = host.refused(
        BEYOND_GAP, "sign_send", **victim.genuine(pay, "gap-1"), psbt=psbt.to_base64()
    )
    assert "index 50000" in err.message
    assert host.chain() == before and host.hot_signed("gap-1") == []
    assert host.frozen_reason(victim) is None


# -- fees are policy -----------------------------------------------------------------------------


def test_fee_limits_count_the_real_fee(host: HostAttack) -> None:
    """Per send at the hot HSM (no link traffic), per send, rate and day at the cold HSM."""
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    pay = [(random_address(), COIN)]
    scripts = [address_to_script(pay[0][0], Network.REGTEST), victim.wallet.script_pubkey(0, 1)]
    size = vsize(1, scripts)
    before = host.chain()

    def attempt(fee: int, tag: str, code: int | None) -> None:
        psbt = build_send_psbt(victim.wallet, [coin], pay, change=(0, coin.value - COIN - fee))
        params = {**victim.genuine(pay, tag), "psbt": psbt.to_base64()}
        if code is None:
            host.hot.sign_send(**params)
        else:
            host.refused(code, "sign_send", **params)

    wire = host.pair.settled_wire_bytes()
    attempt(35_000, "fee-hot", HOT_FEE)  # the hot limit, before anything crosses the link
    assert host.pair.settled_wire_bytes() == wire
    attempt(COLD_MAX_FEE + 1_000, "fee-cold", FEE)
    rate_fee = COLD_MAX_RATE * size + 200
    assert rate_fee <= COLD_MAX_FEE
    attempt(rate_fee, "fee-rate", FEE_RATE)
    day_fee = COLD_MAX_RATE * size - 100
    assert 2 * day_fee <= COLD_MAX_DAY < 3 * day_fee
    attempt(day_fee, "fee-day-1", None)
    attempt(day_fee, "fee-day-2", None)
    attempt(day_fee, "fee-day-3", DAILY_FEE)
    assert host.chain() == before  # signed ones were not broadcast by this test either
    assert host.frozen_reason(victim) is None  # policy refusals freeze nothing


# -- sweeps ---------------------------------------------------------------------------------------


def test_sweep_attacks(host: HostAttack) -> None:
    """Without funding transactions: 730; one outpoint twice: 739; refused sweeps leave the
    settlement index alone; a lying amount freezes."""
    victim = host.victim()
    cold = cold_wallet(victim)
    coins = [host.fund(cold.address(i, RECEIVE)) for i in range(2)]
    utxos = [sweep_utxo(c, i) for i, c in enumerate(coins)]
    before = host.chain()
    host.refused(PREV_TX_REQUIRED, "call", method="sweep", **sweep_params(victim, utxos[:1]))
    first = host.hot.call("sweep", **sweep_params(victim, utxos[:1], coins[:1]))
    assert first["settlement_index"] == 0
    again = host.hot.call("sweep", **sweep_params(victim, utxos[:1], coins[:1]))
    assert again == first  # an identical retry: the same transaction
    twice = sweep_params(victim, utxos, coins, fee_rate=2)
    err = host.refused(739, "call", method="sweep", **twice)
    assert first["txid"] in err.message
    second = host.hot.call("sweep", **sweep_params(victim, utxos[1:], coins[1:]))
    assert second["settlement_index"] == 1  # refusals did not move it
    assert host.chain() == before
    # a lying amount (the split against sweeps) freezes
    victim = host.victim()
    cold = cold_wallet(victim)
    coins = [host.fund(cold.address(i, RECEIVE)) for i in range(2)]
    utxos = [sweep_utxo(c, i) for i, c in enumerate(coins)]
    utxos[1]["amount"] = 1
    before = host.chain()
    host.refused(AMOUNT_MISMATCH, "call", method="sweep", **sweep_params(victim, utxos, coins))
    assert host.chain() == before
    host.assert_frozen_and_alerted(victim, "amount mismatch in a sweep")


def test_unranged_settlement_descriptor_is_refused(host: HostAttack) -> None:
    vdev = VDevice("unranged")
    descriptor = host_settlement(999).split("#")[0].replace("/*", "/0")
    err = host.refused(
        740,
        "provision_account",
        account=999,
        network="regtest",
        vdevice_identity=vdev.identity_hex,
        settlement_descriptor=descriptor,
        vdevice_phone="+15550000100",
        owner_phone="+15550000200",
    )
    assert "not ranged" in err.message


# -- alert budgets --------------------------------------------------------------------------------


def test_freeze_spam_cannot_silence_a_freeze_alert(host: HostAttack) -> None:
    """The attacker spends the hot side's freeze-alert budget on one account (each reason is
    kept), then forges a request on another: the operator still gets that freeze's SMS."""
    spammed = host.victim()
    for n in range(25):
        host.hot.freeze(spammed.id, f"spam {n}")
    reason = host.frozen_reason(spammed) or ""
    assert "spam 0" in reason and "spam 24" in reason  # appended, never overwritten
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    pay = [(random_address(), COIN)]
    psbt = build_send_psbt(victim.wallet, [coin], pay, change=(0, coin.value - COIN - 5_000))
    params = {**victim.genuine(pay, "spam-1"), "psbt": psbt.to_base64()}
    params["vc_code"] = VDevice("forger").vc_code(params["request"])
    host.refused(FORGED, "sign_send", **params)
    host.assert_frozen_and_alerted(victim, "forged vc_code")


# -- helpers --------------------------------------------------------------------------------------


def cold_wallet(victim: Victim) -> Any:

    p = victim.prov
    key = AccountKey(
        parse_xpub(p.receiving_xpub),
        bytes.fromhex(p.receiving_fingerprint or "00000000"),
        bip84_account_path(Network.REGTEST, 0),
    )
    return ColdWallet(key, Network.REGTEST)


def sweep_utxo(coin: Coin, index: int) -> dict[str, Any]:
    return {
        "txid": coin.txid,
        "vout": coin.vout,
        "amount": coin.value,
        "chain": RECEIVE,
        "index": index,
    }


def sweep_params(
    victim: Victim, utxos: list[dict[str, Any]], coins: list[Coin] = (), fee_rate: int = 1
) -> dict[str, Any]:
    return {
        "account": victim.id,
        "utxos": utxos,
        "fee_rate": fee_rate,
        "prev_txs": [c.prev_tx.hex() for c in coins if c.prev_tx],
    }


def host_settlement(account: int) -> str:

    return settlement_descriptor(account)
