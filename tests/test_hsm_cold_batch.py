"""The cold HSM's check of a batched payout (`cosign_batch`, docs/money.md "Batched payouts").

A real cold HSM process over the link: a transaction paying several V-device-signed requests
is co-signed only if its payments are exactly the union of the members' `outs` (plus the
account's change), every `vc_code` verifies and no `user_tx_no` is used; any bad member refuses
the whole batch, records no number, and (as for a single send) freezes the account when the
request is not what the V-device signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from bitcointx.core import CTransaction

from firmware_sim.node.validation import Coin as NodeCoin
from firmware_sim.node.validation import verify_scripts
from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import (
    FEE,
    MAX_FEE_SAT,
    TIMEOUT,
    Account,
    _key,
    check_cold_signatures,
    frozen_for,
    provision,
    refused,
    unsigned_tx,
)
from tests.hsm_fixtures import Coin, ColdHsm, build_send_psbt, random_address, send_request
from wallet_core import signatures
from wallet_core.psbt import Psbt

Member = tuple[Sequence[tuple[str, int]], str]  # (payments, user_tx_no)


def batch(
    acct: Account,
    members: Sequence[Member],
    *,
    coins: Sequence[Coin] | None = None,
    paid: Sequence[tuple[str, int]] | None = None,
    extra_outputs: Sequence[tuple[bytes, int]] = (),
    forge: str | None = None,
    fee: int = FEE,
    change_index: int = 0,
) -> tuple[dict[str, Any], Psbt, list[Coin]]:
    """A batch paying `paid` (default: every member's payments in order) plus change, each
    member signed by the V-device (`forge`: that member's vc_code by another key)."""
    coins = list(coins) if coins is not None else [acct.coin(2_000_000)]
    paid = list(paid) if paid is not None else [p for payments, _ in members for p in payments]
    change = (change_index, sum(c.value for c in coins) - sum(v for _, v in paid) - fee)
    psbt = build_send_psbt(acct.wallet, coins, paid, change=change, extra_outputs=extra_outputs)
    wire = []
    for payments, user_tx_no in members:
        request = send_request(payments, user_tx_no)
        key = _key("not the channel key") if user_tx_no == forge else None
        wire.append({**request, "vc_code": acct.vdevice.vc_code(request, key), "c_id": acct.c_id})
    payload = {
        "account": acct.number,
        "tx": unsigned_tx(psbt),
        "inputs": [[c.value, c.chain, c.index] for c in coins],
        "change": [[len(paid), change_index]],
        "members": wire,
        "prev_txs": list(dict.fromkeys(c.prev_tx for c in coins if c.prev_tx)),
    }
    return payload, psbt, coins


def members(prefix: str, n: int) -> list[Member]:
    return [([(random_address(), 100_000 + i)], f"{prefix}-{i}") for i in range(n)]


def statement_txid(link: Any, account: int, user_tx_no: str) -> str | None:
    answer = link.call(
        "send_statement", {"account": account, "user_tx_no": user_tx_no}, timeout=TIMEOUT
    )
    return answer.get("txid") if answer["state"] == "signed" else None


def unfreeze(cold: ColdHsm, account: int) -> None:
    pin = cold.section.str("user_pin")
    ok = cold.cold_cli("unfreeze", str(account), "--pin-stdin", stdin=pin + "\n")
    assert ok.returncode == 0, ok.stderr


def test_a_batch_pays_the_union_and_binds_every_user_tx_no(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 60)
    sends = members("b60", 3)
    sends[1] = ([(random_address(), 50_000), (random_address(), 70_000)], "b60-1")
    payload, psbt, coins = batch(acct, sends)
    sigs = link.call("cosign_batch", payload, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, psbt, coins, sigs)
    # identical retry (the answer was lost): the same signatures, nothing new
    again = {k: v for k, v in payload.items() if k != "prev_txs"}
    assert link.call("cosign_batch", again, timeout=TIMEOUT)["signatures"] == sigs
    # every number is bound to the one transaction, and the statement says so
    for _, no in sends:
        assert statement_txid(link, 60, no) == psbt.txid
    # a complete, valid spend once the hot side adds its signature
    for i, (coin, sig) in enumerate(zip(coins, sigs, strict=True)):
        psbt.add_signature(i, acct.wallet.pubkeys(coin.index, coin.chain)[1], sig)
        psbt.add_signature(
            i, acct.hot_pub, signatures.sign_digest(acct.hot.secret, psbt.sighash(i))
        )
    psbt.finalize()
    spent = [
        NodeCoin(c.value, acct.wallet.script_pubkey(c.index, c.chain), 1, False) for c in coins
    ]
    verify_scripts(CTransaction.deserialize(psbt.extract()), spent, policy=True)
    # a member's number cannot be used again, alone or in another batch
    single, _, _ = batch(acct, [sends[0], (sends[2][0], "b60-new")])
    assert refused(link, "cosign_batch", single).code == ColdErrorCode.USER_TX_NO_REUSED
    assert "user_tx_no reused" in (frozen_for(link, 60) or "")


@pytest.mark.parametrize(
    ("case", "code", "why"),
    [
        ("missing", ColdErrorCode.OUTPUT_MISMATCH, "output mismatch"),
        ("extra", ColdErrorCode.EXTRA_OUTPUT, "extra output"),
        ("rewritten", ColdErrorCode.OUTPUT_MISMATCH, "output mismatch"),
        ("duplicate", ColdErrorCode.USER_TX_NO_REUSED, "user_tx_no reused"),
        ("forged", ColdErrorCode.FORGED_VC_CODE, "forged vc_code"),
    ],
)
def test_a_bad_member_refuses_the_whole_batch_and_freezes(
    cold: ColdHsm, link: Any, case: str, code: int, why: str
) -> None:
    """Not what the V-devices signed: refused whole, the account frozen, and no number used
    (after the console unfreezes, the honest batch under the same numbers signs)."""
    number = 61 + ["missing", "extra", "rewritten", "duplicate", "forged"].index(case)
    acct = provision(cold, link, number)
    sends = members(f"b{number}", 3)
    coins = [acct.coin(2_000_000)]
    paid = [p for payments, _ in sends for p in payments]
    kwargs: dict[str, Any] = {}
    wire_members = list(sends)
    if case == "missing":  # the transaction drops member 1's payment
        kwargs["paid"] = [paid[0], paid[2]]
    elif case == "extra":  # an output nobody signed, not declared change
        kwargs["extra_outputs"] = [(bytes.fromhex("0014" + "11" * 20), 30_000)]
    elif case == "rewritten":  # member 2 paid elsewhere
        kwargs["paid"] = [paid[0], paid[1], (random_address(), paid[2][1])]
    elif case == "duplicate":  # member 0 twice (its payment too): one signed request paid twice
        wire_members = [sends[0], sends[0], sends[1]]
    elif case == "forged":
        kwargs["forge"] = sends[1][1]
    payload, _, _ = batch(acct, wire_members, coins=coins, **kwargs)
    err = refused(link, "cosign_batch", payload)
    assert err.code == code, err.message
    assert f"account {number} frozen" in err.message
    assert why in (frozen_for(link, number) or "")
    alerts = link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"]
    assert any(a["account"] == number and a["kind"] == "account_frozen" for a in alerts)

    unfreeze(cold, number)
    honest, psbt, _ = batch(acct, sends, coins=coins)
    sigs = link.call("cosign_batch", honest, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, psbt, coins, sigs)


def test_a_batch_is_refused_without_freezing_for_a_fee_or_a_malformed_member(
    cold: ColdHsm, link: Any
) -> None:
    acct = provision(cold, link, 66)
    sends = members("b66", 2)
    payload, _, _ = batch(acct, sends, fee=MAX_FEE_SAT + 1)
    assert refused(link, "cosign_batch", payload).code == ColdErrorCode.FEE_ABOVE_POLICY
    payload, _, _ = batch(acct, sends)
    payload["members"][1]["coin_code"] = "LTC"
    err = refused(link, "cosign_batch", payload)
    assert err.code == ColdErrorCode.BAD_REQUEST and "members[1]" in err.message
    payload, _, _ = batch(acct, sends[:1])
    err = refused(link, "cosign_batch", payload)
    assert err.code == ColdErrorCode.BAD_REQUEST and "2 to 100 members" in err.message
    assert frozen_for(link, 66) is None


def _bump(acct: Account, sends: Sequence[Member], coins: Sequence[Coin], fee: int) -> Any:
    payload, psbt, _ = batch(acct, sends, coins=coins, fee=fee, change_index=1)
    return payload, psbt


def test_a_batch_is_fee_bumped_only_as_a_whole(cold: ColdHsm, link: Any) -> None:
    """A replacement pays exactly the same union (the same numbers); one that drops a member,
    or a single send replacing one member, is a reuse: refused, frozen."""
    acct = provision(cold, link, 67)
    sends = members("b67", 3)
    coins = [acct.coin(2_000_000)]
    payload, psbt, _ = batch(acct, sends, coins=coins)
    link.call("cosign_batch", payload, timeout=TIMEOUT)

    bumped, bumped_psbt = _bump(acct, sends, coins, FEE * 2)
    sigs = link.call("cosign_batch", bumped, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, bumped_psbt, coins, sigs)
    for _, no in sends:
        assert statement_txid(link, 67, no) == bumped_psbt.txid != psbt.txid

    dropped, _ = _bump(acct, sends[:2], coins, FEE * 2 + 500)
    err = refused(link, "cosign_batch", dropped)
    assert err.code == ColdErrorCode.USER_TX_NO_REUSED and "not a replacement" in err.message


def test_a_single_send_cannot_replace_a_batch_member(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 68)
    sends = members("b68", 2)
    coins = [acct.coin(2_000_000)]
    payload, _, _ = batch(acct, sends, coins=coins)
    link.call("cosign_batch", payload, timeout=TIMEOUT)
    payments, no = sends[0]
    single, _ = acct.send(
        payments, no, coins=coins, change=(2, coins[0].value - payments[0][1] - FEE * 4)
    )
    assert refused(link, "cosign", single).code == ColdErrorCode.USER_TX_NO_REUSED
    assert "user_tx_no reused" in (frozen_for(link, 68) or "")


def test_the_policy_judges_each_member_counting_the_ones_before_it(
    cold: ColdHsm, link: Any
) -> None:
    """Each member is one send to the customer's policy: two of 200 000 sat pass a 300 000
    per-send limit together; a batch that would cross the daily limit with its second member
    is refused whole (no freeze), and nothing of it counts afterwards."""
    acct = provision(cold, link, 69, register=False, confirm=False)
    cold.confirm(
        69,
        acct.vdevice.identity_hex,
        "--max-send-sat=300000",
        "--max-daily-sat=500000",
        "--max-sends-per-hour=10",
        "--approval-above-sat=300000",
    )
    link.call("register_channel", acct.vdevice.channel_registration(69, "c1"), timeout=TIMEOUT)
    big = [([(random_address(), 200_000)], f"p69-{i}") for i in range(2)]
    payload, _, _ = batch(acct, big)
    assert link.call("cosign_batch", payload, timeout=TIMEOUT)["signatures"]
    over = [([(random_address(), 60_000)], f"p69-over-{i}") for i in range(2)]
    payload, _, _ = batch(acct, over)
    err = refused(link, "cosign_batch", payload)
    assert err.code == ColdErrorCode.POLICY_REFUSED and "24 h limit" in err.message
    assert frozen_for(link, 69) is None
    single, _ = acct.send(over[0][0], "p69-over-0")  # the first member alone still fits
    assert link.call("cosign", single, timeout=TIMEOUT)["signatures"]
