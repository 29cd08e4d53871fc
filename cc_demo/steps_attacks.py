"""Demo steps: attacks by a hacked custody host on the HSM pair (docs/threat-model.md).

attack-fee-drain  custody's host (its config: the hot HSM's RPC secret; its database: a genuine
                  V-device-signed request) asks hsm-hot, from two threads at once, to co-sign
                  one transaction whose inputs are stated as "true amount" and "1 sat": a
                  segwit signature covers only its own input's amount, so splicing the two
                  answers would burn the second input as fee. The cold HSM verifies amounts
                  from the funding transaction itself: refused, frozen, the operator texted,
                  nothing reaches the node; unfrozen at the cold console.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from cc_demo.scenario import (
    ALTERED_SAT,
    CHAIN_TIMEOUT,
    SEND_TIMEOUT,
    Context,
    expect_frozen_and_alerted,
    expect_no_spend,
    merchant_withdrawal,
    unfreeze,
    unfrozen_on_failure,
    wait_send_final,
    worker_paused,
)
from cc_demo.support import (
    StepFailed,
    btc,
    custody_db,
    inbox_texts,
    mempool,
    mine,
    random_address,
    wait_for,
)
from custody.batches import account_keys
from custody.hsm_client import HotHsmClient, HsmRefused
from custody.models import Account, Send
from wallet_core.addresses import address_to_script
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.wallets import CHANGE, RECEIVE

COIN_SAT = 20_000_000  # two equal hot coins of 0.2 BTC: the split burns one of them
AMOUNT_MISMATCH = 731  # hsm_cold.errors.ColdErrorCode.AMOUNT_MISMATCH
FROZEN = 703


def step_attack_fee_drain(ctx: Context) -> str:
    with unfrozen_on_failure(ctx):
        return _attack_fee_drain(ctx)


def _attack_fee_drain(ctx: Context) -> str:

    account = ctx.need("account_id")
    ctx.need("c_id")
    hot = ctx.custody("hot")
    # the merchant tops up the hot wallet with two equal coins (one funding transaction)
    addresses = [hot.get("/address/next") for _ in range(2)]
    funding = ctx.faucet.pay([(a["address"], COIN_SAT) for a in addresses])
    [block] = mine(ctx.rpc, ctx.network, 1)
    coins = _coins(ctx, funding, block, addresses)
    factory = custody_db(ctx.config)
    payee = random_address(ctx.network)
    with factory() as s:
        last_id = s.execute(select(func.max(Send.id))).scalar() or 0
    operator_seen = len(inbox_texts(ctx.carrier, ctx.operator_number))
    with worker_paused(ctx):
        vtest_id = merchant_withdrawal(ctx, [(payee, ALTERED_SAT)])

        def posted() -> Any:
            with factory() as s:
                return s.execute(
                    select(Send).where(Send.account_id == account, Send.id > last_id)
                ).scalar_one_or_none()

        send = wait_for(posted, SEND_TIMEOUT, f"the V-device to post withdrawal {vtest_id}")
        pool, height = mempool(ctx.rpc), ctx.rpc.get_block_count()
        params = _genuine(send)
        split = [_split_psbt(ctx, account, coins, payee, lie) for lie in (1, 0)]
        answers: list[Any] = [None, None]

        def attempt(n: int) -> None:
            client = HotHsmClient.from_config(ctx.config)
            try:
                answers[n] = client.sign_send(**params, psbt=split[n])
            except HsmRefused as exc:
                answers[n] = exc.code

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CHAIN_TIMEOUT)
        if not all(isinstance(a, int) for a in answers) or AMOUNT_MISMATCH not in answers:
            raise StepFailed(f"the split requests were answered {answers}")
        reason = expect_frozen_and_alerted(ctx, operator_seen, "amount mismatch")
        node = expect_no_spend(ctx, pool, height, payee)
    final = wait_send_final(ctx, send.user_tx_no)
    if final["hot_wallet_tx_status"] != "failed" or final["tx_hash"]:
        raise StepFailed(f"the genuine send is {final['hot_wallet_tx_status']} on a frozen account")
    unfreeze(ctx)
    return (
        f"hacked custody sent hsm-hot two concurrent co-sign requests for {send.user_tx_no} "
        f"(inputs {btc(COIN_SAT)} + {btc(COIN_SAT)}, one stated as 1 sat: would burn "
        f"{btc(COIN_SAT)} as fee); codes {sorted(answers)}: the cold HSM checked the amounts "
        f"against the funding transaction, refused ({reason[:30]}..), froze account {account}, "
        f"texted the operator; {node}; unfrozen at the cold console"
    )


def _coins(ctx: Context, funding: str, block: str, addresses: list[dict]) -> list[Any]:
    """(txid, vout, value, index, raw funding tx) of the two new hot coins."""
    raw = ctx.rpc.get_raw_transaction(funding, True, block)
    out = []
    for a in addresses:
        vout = next(o["n"] for o in raw["vout"] if o["scriptPubKey"].get("address") == a["address"])
        out.append((funding, int(vout), COIN_SAT, int(a["index"]), bytes.fromhex(raw["hex"])))
    return out


def _genuine(send: Any) -> dict[str, Any]:
    """What custody's database holds of the V-device-signed request."""
    return {
        "account": send.account_id,
        "request": {
            "coin_code": send.coin_code,
            "is_dynamic_fee": send.is_dynamic_fee,
            "outs": send.outs,
            "user_tx_no": send.user_tx_no,
        },
        "vc_code": send.vc_code,
        "c_id": send.c_id,
    }


def _split_psbt(ctx: Context, account_id: int, coins: list[Any], payee: str, lie: int) -> str:
    """The one transaction both requests share, with input `lie` stated as 1 sat and only the
    other input's funding transaction attached (as the attacker chooses)."""

    with custody_db(ctx.config)() as s:
        acct = s.get(Account, account_id)
        if acct is None:
            raise StepFailed(f"account {account_id} is not in custody's database")
        wallet = account_keys(acct).hot
        change_index = int(acct.hot_change_next)
    inputs = [
        PsbtInput(
            txid,
            vout,
            1 if n == lie else value,
            wallet.script_pubkey(index, RECEIVE),
            wallet.witness_script(index, RECEIVE),
            wallet.origins(index, RECEIVE),
        )
        for n, (txid, vout, value, index, _) in enumerate(coins)
    ]
    change = COIN_SAT + 1 - ALTERED_SAT - 5_000  # a modest fee over the stated amounts
    outputs = [
        PsbtOutput(address_to_script(payee, ctx.network), ALTERED_SAT),
        PsbtOutput(
            wallet.script_pubkey(change_index, CHANGE),
            change,
            wallet.origins(change_index, CHANGE),
            wallet.witness_script(change_index, CHANGE),
        ),
    ]
    psbt = Psbt.create(inputs, outputs)
    honest = 1 - lie
    psbt.set_prev_tx(honest, coins[honest][4])  # true for this input; the other one lies
    return psbt.to_base64()
