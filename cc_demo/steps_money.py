"""Demo steps of money movement: a burst of withdrawals on unconfirmed change, a deposit
replaced before it confirmed, and the merchant site catching up on webhook events after an
outage.

 burst             ten withdrawals in one block interval: all broadcast before the next block,
                   in one or more batched transactions (`batch_sends`: the sends of the account
                   pending together go in one; the cold HSM co-signs a batch whole; a later one
                   spends the previous one's unconfirmed change; every one BIP125); custody
                   shows each withdrawal with its transaction's hash, and the step says how many
                   transactions carried the ten
 fee-bump          a withdrawal sent with a low fee is replaced (`custody send bump`) by one
                   paying the same with more fee, without a new V-device signature, and mined;
                   custody, the site (by webhook) and the V-device (the cold HSM's signed SMS)
                   show the new txid
 consolidate       small hot coins merged into one at the account's own change address,
                   co-signed without a V-device signature (every output is its own change)
 deposit-replaced  a deposit replaced by a BIP125 transaction paying elsewhere: the site's
                   webhook shows it replaced, and no balance ever counted it
 webhook-catch-up  the site is stopped, events accumulate, it resumes and has every event, in
                   order, with no gap
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from cc_demo.scenario import (
    CHAIN_TIMEOUT,
    Context,
    balance,
    check_paid,
    find_tx,
    merchant_withdrawal,
    send_state,
    site_withdrawal,
    wait_site_finished,
)
from cc_demo.support import (
    SAT_PER_BTC,
    StepFailed,
    btc,
    custody_db,
    mempool,
    mine,
    process_pid,
    random_address,
    vdevice_status,
    wait_for,
)

BURST = 10
BURST_SAT = 1_000_000
REPLACED_SAT = 7_000_000
BUMP_SAT = 4_000_000
SMALL_SAT = 200_000
BUMP_RATE = 25
CATCH_UP_SAT = 3_000_000


def site_deposits(ctx: Context) -> dict[str, Any]:
    return dict(ctx.site.get("/merchant/deposits"))


def site_deposit(ctx: Context, txid: str) -> dict[str, Any] | None:
    return next((d for d in site_deposits(ctx)["deposits"] if d["txid"] == txid), None)


def ensure_webhook(ctx: Context) -> int:
    """The site registered as the account's webhook endpoint, its history caught up by polling."""
    if "webhook_id" in ctx.facts:
        return int(ctx.facts["webhook_id"])
    s = ctx.config.section("merchant_site")
    url = f"http://{s.str('host')}:{s.int('port')}/webhooks/custody"
    account = str(ctx.need("account_id"))
    out = ctx.cli.run("custody.cli", "webhook", "add", "--account", account, "--url", url)
    added = json.loads(out)
    ctx.cli.run(
        "examples.merchant_site.cli", "set-webhook-secret", "-", stdin=added["secret"] + "\n"
    )
    ctx.cli.run("examples.merchant_site.cli", "catch-up")  # events from before the endpoint
    ctx.facts["webhook_id"] = added["id"]
    return int(added["id"])


def step_burst(ctx: Context) -> str:
    ctx.need("hot_token")
    height = ctx.rpc.get_block_count()
    payments = [(random_address(ctx.network), BURST_SAT + n) for n in range(BURST)]
    ids = [merchant_withdrawal(ctx, [p]) for p in payments]
    done = [wait_site_finished(ctx, vtest_id) for vtest_id in ids]
    failed = [w["vtest_id"] for w in done if w["status"] != "sent"]
    if failed:
        raise StepFailed(f"withdrawals {failed} were not sent")
    if ctx.rpc.get_block_count() != height:
        raise StepFailed("a block was mined during the burst: the step proves nothing")
    txids = [str(w["tx_hash"]) for w in done]
    missing = set(txids) - mempool(ctx.rpc)
    if missing:
        raise StepFailed(f"transactions {sorted(missing)} are not in the mempool")
    entries = [ctx.rpc.get_mempool_entry(t) for t in txids]
    if not all(e["bip125-replaceable"] for e in entries):
        raise StepFailed("a withdrawal does not signal BIP125")
    chain = max(int(e["ancestorcount"]) for e in entries)
    for vtest_id, txid in zip(ids, txids, strict=True):
        state = send_state(ctx, vtest_id)
        if state["tx_hash"] != txid or state["hot_wallet_tx_status"] != "OK":
            raise StepFailed(f"custody shows {vtest_id} as {state['hot_wallet_tx_status']}")
    carried = Counter(txids)  # withdrawals per transaction: each shows its batch's hash
    for txid, n in carried.items():
        paid = {p for p in payments if p in tx_payments(ctx, txid)}
        if len(paid) != n:
            raise StepFailed(f"transaction {txid} pays {len(paid)} of its {n} withdrawals")
    [block] = mine(ctx.rpc, ctx.network, 1)
    mined = set(ctx.rpc.get_block(block, 1)["tx"])
    if not set(txids) <= mined:
        raise StepFailed("not every withdrawal of the burst was mined in the next block")
    sizes = "+".join(str(n) for n in sorted(carried.values(), reverse=True))
    return (
        f"{BURST} withdrawals of ~{btc(BURST_SAT)} posted in one block interval: all "
        f"countersigned, co-signed and broadcast before the next block, carried by"
        f" {len(carried)} transaction(s) ({sizes} withdrawals each; custody shows each"
        f" withdrawal with its transaction's hash; chain of {chain} on unconfirmed change, all"
        " BIP125), all mined in that block"
    )


def tx_payments(ctx: Context, txid: str) -> set[tuple[str, int]]:
    """(address, sat) of every output of a mempool transaction."""
    tx = ctx.rpc.get_raw_transaction(txid, True)
    return {
        (str(o["scriptPubKey"].get("address", "")), round(Decimal(str(o["value"])) * SAT_PER_BTC))
        for o in tx["vout"]
    }


def step_fee_bump(ctx: Context) -> str:
    ctx.need("hot_token")
    ensure_webhook(ctx)
    payment = (random_address(ctx.network), BUMP_SAT)
    outs = f"{payment[0]},{payment[1]}"
    vtest_id = str(ctx.site.post("/merchant/withdrawals", {"outs": outs, "dynamic": 0})["vtest_id"])
    sent = wait_site_finished(ctx, vtest_id)
    if sent["status"] != "sent":
        raise StepFailed(f"withdrawal {vtest_id} was not sent")
    old = str(sent["tx_hash"])
    old_fee = int(Decimal(str(ctx.rpc.get_mempool_entry(old)["fees"]["base"])) * SAT_PER_BTC)
    out = ctx.cli.run("custody.cli", "send", "bump", vtest_id, "--fee-rate", str(BUMP_RATE))
    bumped = json.loads(out)
    new = str(bumped["txid"])
    pool = mempool(ctx.rpc)
    if new not in pool or old in pool:
        raise StepFailed(f"the node holds {sorted(pool & {old, new})}, not just the replacement")
    wait_for(
        lambda: send_state(ctx, vtest_id)["tx_hash"] == new,
        CHAIN_TIMEOUT,
        f"custody's GET /tx/{vtest_id} to show {new}",
    )
    wait_for(
        lambda: site_withdrawal(ctx, vtest_id)["tx_hash"] == new,
        CHAIN_TIMEOUT,
        f"the site's webhook to give withdrawal {vtest_id} the new txid",
    )

    def phone_knows() -> bool:  # the cold HSM's signed SMS to the V-device
        last = vdevice_status(ctx.cli).get("last_send") or {}
        return last.get("user_tx_no") == vtest_id and last.get("tx_hash") == new

    wait_for(phone_knows, CHAIN_TIMEOUT, f"the V-device to learn {new} for {vtest_id}")
    height, fee = check_paid(ctx, new, [payment])
    return (
        f"withdrawal {vtest_id} sent at the static rate (tx {old}, fee {old_fee} sat) "
        f"replaced by `custody send bump --fee-rate {BUMP_RATE}`: tx {new} pays exactly the "
        f"same output with fee {fee} sat, co-signed without a new V-device signature, mined at "
        f"height {height}; GET /tx/{vtest_id}, the site (webhook) and the V-device (the cold "
        "HSM's signed SMS, `vdevice status`) show the new txid"
    )


def step_consolidate(ctx: Context) -> str:
    hot = ctx.custody("hot")
    account = str(ctx.need("account_id"))
    addresses = [hot.get("/address/next")["address"] for _ in range(3)]
    funding = ctx.faucet.pay([(a, SMALL_SAT) for a in addresses])
    wait_for(lambda: find_tx(hot, funding), CHAIN_TIMEOUT, f"small hot coins {funding} in /tx")
    mine(ctx.rpc, ctx.network, 1)
    wait_for(
        lambda: (t := find_tx(hot, funding)) and int(t["confirmation"]) >= 1,
        CHAIN_TIMEOUT,
        f"small hot coins {funding} confirmed",
    )
    before = balance(ctx, "hot")
    out = ctx.cli.run(
        "custody.cli", "wallet", "consolidate", "--account", account, "--max-inputs", "4"
    )
    done = json.loads(out)
    txid = str(done["txid"])
    raw = ctx.rpc.get_raw_transaction(txid, True)
    mine(ctx.rpc, ctx.network, 1)

    def mined() -> dict[str, Any] | None:
        t = find_tx(hot, txid)
        return t if t is not None and int(t["confirmation"]) >= 1 else None

    detail = wait_for(mined, CHAIN_TIMEOUT, f"consolidation {txid} confirmed in GET /tx")
    if not all(o["is_mine"] for o in detail["outputs"]) or len(raw["vout"]) != 1:
        raise StepFailed(f"consolidation {txid} pays something other than the hot wallet")
    after = wait_for(
        lambda: (b := balance(ctx, "hot")) == before - int(done["fee"]) and b,
        CHAIN_TIMEOUT,
        "the hot balance to drop by the fee only",
    )
    return (
        f"`custody wallet consolidate`: {done['inputs']} hot coins merged by tx {txid} into "
        f"one of {btc(int(done['value']))} at change address #{done['change_index']}, "
        f"co-signed with no V-device signature (every output the account's own change, "
        f"{done['fee']} sat fee within the consolidation policy), mined; hot balance "
        f"{btc(before)} -> {btc(after)}: only the fee left"
    )


def step_deposit_replaced(ctx: Context) -> str:
    ctx.need("cold_token")
    ensure_webhook(ctx)
    before = balance(ctx, "cold")
    address = ctx.site.post("/merchant/deposit-address", {})["address"]
    txid = ctx.faucet.pay([(address, REPLACED_SAT)])
    wait_for(
        lambda: (d := site_deposit(ctx, txid)) and d["state"] == "seen",
        CHAIN_TIMEOUT,
        f"the site's webhook to show deposit {txid} seen",
    )
    if balance(ctx, "cold") != before:
        raise StepFailed("custody's balance counted an unconfirmed deposit")
    elsewhere = random_address(ctx.network)
    replacement = ctx.faucet.replace(txid, [(elsewhere, REPLACED_SAT - 100_000)], fee=60_000)
    wait_for(
        lambda: (d := site_deposit(ctx, txid)) and d["state"] == "replaced",
        CHAIN_TIMEOUT,
        f"the site's webhook to show deposit {txid} replaced",
    )
    [block] = mine(ctx.rpc, ctx.network, 1)
    if replacement not in ctx.rpc.get_block(block, 1)["tx"]:
        raise StepFailed(f"the replacement {replacement} was not mined")
    after = balance(ctx, "cold")
    credited = site_deposits(ctx)["credited"]["cold"]
    if after != before or (site_deposit(ctx, txid) or {}).get("state") != "replaced":
        raise StepFailed(f"the replaced deposit moved the balance ({before} -> {after})")
    return (
        f"deposit {txid} of {btc(REPLACED_SAT)} seen by the site's webhook, then replaced by "
        f"{replacement} paying elsewhere (BIP125): the site marked it replaced; custody's cold "
        f"balance stayed {btc(after)} and the site credits {btc(credited)}, never this one"
    )


@contextmanager
def site_stopped(ctx: Context) -> Iterator[None]:
    """SIGSTOP the merchant site (it answers nothing), SIGCONT on the way out."""
    pid = process_pid(ctx.config, "merchant-site")
    if pid is None:
        raise StepFailed("merchant-site does not run (custody status shows no pid)")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def custody_last_seq(ctx: Context) -> int:
    seqs = []
    for side in ("cold", "hot"):
        page = ctx.custody(side).get("/events", after=0, limit=500)
        after = int(page["last_seq"])
        while page["events"]:
            after = int(page["last_seq"])
            page = ctx.custody(side).get("/events", after=after, limit=500)
        seqs.append(after)
    return max(seqs)


def failed_attempts(ctx: Context, endpoint: int) -> int:
    """Failed delivery attempts to `endpoint`, from custody's delivery log."""
    from sqlalchemy import func, select  # noqa: PLC0415

    from custody.models import WebhookDelivery  # noqa: PLC0415

    with custody_db(ctx.config)() as s:
        total = s.execute(
            select(func.coalesce(func.sum(WebhookDelivery.attempts), 0)).where(
                WebhookDelivery.endpoint_id == endpoint,
                WebhookDelivery.last_result.not_like("HTTP 2%"),
            )
        ).scalar()
    return int(total or 0)


def step_webhook_catch_up(ctx: Context) -> str:
    ctx.need("cold_token")
    endpoint = ensure_webhook(ctx)
    before = custody_last_seq(ctx)
    failed_before = failed_attempts(ctx, endpoint)
    with site_stopped(ctx):
        # The site is stopped: the address comes from custody (the site verified batch 0).
        cold = ctx.custody("cold").get("/address/next")["address"]
        txid = ctx.faucet.pay([(cold, CATCH_UP_SAT)])
        mine(ctx.rpc, ctx.network, 1)
        wait_for(
            lambda: custody_last_seq(ctx) >= before + 2,
            CHAIN_TIMEOUT,
            "custody to record the deposit's events while the site is stopped",
        )
        during = custody_last_seq(ctx)
        wait_for(
            lambda: failed_attempts(ctx, endpoint) > failed_before,
            CHAIN_TIMEOUT,
            "the webhook deliverer to fail against the stopped site (events queue up)",
        )
    latest = wait_for(
        lambda: (e := site_deposits(ctx)["events"])["max_seq"] >= during and e,
        CHAIN_TIMEOUT,
        f"the site to catch up to event {during}",
    )
    if latest["count"] != latest["max_seq"]:
        raise StepFailed(f"the site holds {latest['count']} events up to seq {latest['max_seq']}")
    deposit = site_deposit(ctx, txid) or {}
    if deposit.get("state") not in ("confirmed", "final"):
        raise StepFailed(f"the site shows deposit {txid} as {deposit.get('state')}")
    return (
        f"site stopped; a deposit was seen and confirmed (events {before + 1}-{during} "
        "queued, deliveries failing and backing off); on resuming the site received them all "
        f"by webhook in order: it holds {latest['count']} events 1-{latest['max_seq']}, "
        f"no gap; deposit {txid} confirmed"
    )
