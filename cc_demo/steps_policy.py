"""Demo steps of the customer's spending policy (docs/threat-model.md, "A hacked merchant site").

attack-site-drain  the hacked site (its database and the vtest password) tries to empty the hot
                   wallet: a send within the policy goes, one over the per-send limit is
                   refused, one above the approval threshold waits for the owner, whose phone
                   gets the request; nothing beyond the policy reaches custody or the node
owner-approval     the owner declines the attacker's held send; the merchant's large one waits
                   for the owner while a small one queued after it goes (a held send does not
                   stop the queue); the owner approves the large one with a one-time code: it
                   is signed with the approval, mined
"""

from __future__ import annotations

from cc_common.spending_policy import DEFAULT_POLICY
from cc_demo.scenario import (
    SMS_TIMEOUT,
    Context,
    StepFailed,
    check_paid,
    merchant_withdrawal,
    owner_code,
    send_state,
    site_withdrawal,
    tx_outputs,
    wait_site_finished,
)
from cc_demo.support import btc, inbox_texts, mempool, random_address, wait_for, wait_inbox

WITHIN_SAT = 5_000_000  # under the approval threshold: goes
OVER_LIMIT_SAT = 60_000_000  # over the per-send limit: refused outright
LARGE_SAT = 21_000_000  # above the approval threshold: waits for the owner
APPROVED_SAT = 22_000_000  # the merchant's own large payout, approved by the owner
BEHIND_SAT = 1_000_000  # queued behind the held payout: goes while it waits


def _approval_request(ctx: Context, seen: int, amount: int) -> str:
    """The owner's phone gets `CC APPROVE? send <id>: <amount> sat ...`; the id."""
    text = wait_inbox(
        ctx.carrier, ctx.owner_number, f"{amount} sat", seen, SMS_TIMEOUT, "the owner"
    )
    if "CC:APPROVE:" not in text:
        raise StepFailed(f"the owner got {text[:60]!r}, not an approval request")
    return text.split("CC:APPROVE:")[1].split(":")[0]


def _custody_has_none(ctx: Context, vtest_id: str) -> None:
    from vdevice.sends import user_tx_no_for  # noqa: PLC0415

    try:
        send_state(ctx, user_tx_no_for(vtest_id))
    except StepFailed as exc:
        if "HTTP 404" in str(exc):
            return
        raise
    raise StepFailed(f"custody holds a send for withdrawal {vtest_id}")


def _paid_in_mempool(ctx: Context, address: str) -> bool:
    return any(a == address for txid in mempool(ctx.rpc) for a, _ in tx_outputs(ctx, txid))


def step_attack_site_drain(ctx: Context) -> str:
    ctx.need("hot_token")
    seen = len(inbox_texts(ctx.carrier, ctx.owner_number))
    within, over, large = (random_address(ctx.network) for _ in range(3))
    first = merchant_withdrawal(ctx, [(within, WITHIN_SAT)])
    too_much = merchant_withdrawal(ctx, [(over, OVER_LIMIT_SAT)])
    held = merchant_withdrawal(ctx, [(large, LARGE_SAT)])
    w = wait_site_finished(ctx, first)
    if w["status"] != "sent":
        raise StepFailed(f"the within-policy withdrawal {first} is {w['status']}")
    w = wait_site_finished(ctx, too_much)
    if w["status"] != "failed":
        raise StepFailed(f"the over-limit withdrawal {too_much} is {w['status']}")
    refusal = wait_inbox(
        ctx.carrier, ctx.owner_number, f"{too_much} refused", seen, SMS_TIMEOUT, "the owner"
    )
    approval_id = _approval_request(ctx, seen, LARGE_SAT)
    if site_withdrawal(ctx, held)["status"] != "pending":
        raise StepFailed(f"the large withdrawal {held} did not wait for the owner")
    for vtest_id in (too_much, held):
        _custody_has_none(ctx, vtest_id)
    for address in (over, large):
        if _paid_in_mempool(ctx, address):
            raise StepFailed(f"something in the mempool pays the attacker's address {address}")
    check_paid(ctx, w_txid := site_withdrawal(ctx, first)["tx_hash"], [(within, WITHIN_SAT)])
    ctx.facts["drain_held"] = (approval_id, held)
    p = DEFAULT_POLICY
    return (
        f"the hacked site enqueued {btc(WITHIN_SAT)}, {btc(OVER_LIMIT_SAT)} and "
        f"{btc(LARGE_SAT)} to its own addresses: the first went (tx {w_txid[:16]}..., within "
        f"the policy), the second was refused (over {btc(p.max_send_sat)} per send: "
        f"{refusal[:40]!r}), the third waits for the owner (above {btc(p.approval_above_sat)}; "
        f"approval request {approval_id} on the owner's phone); custody and the node never "
        "saw the other two"
    )


def _owner_says(ctx: Context, text: str, answer: str) -> None:
    seen = len(inbox_texts(ctx.carrier, ctx.owner_number))
    ctx.carrier.inject_sms(ctx.vdevice_number, text, ctx.owner_number)
    wait_inbox(ctx.carrier, ctx.owner_number, answer, seen, SMS_TIMEOUT, "the owner")


def step_owner_approval(ctx: Context) -> str:
    ctx.need("hot_token")
    declined = ""
    if "drain_held" in ctx.facts:  # the attacker's held send: the owner says no
        approval_id, held = ctx.facts.pop("drain_held")
        _owner_says(ctx, f"CC:REJECT:{approval_id}:{owner_code(ctx)}", f"CC:REJECTED:{approval_id}")
        w = wait_site_finished(ctx, held)
        if w["status"] != "failed":
            raise StepFailed(f"the declined withdrawal {held} is {w['status']}")
        declined = f"declined the attacker's held send {approval_id}; "
    seen = len(inbox_texts(ctx.carrier, ctx.owner_number))
    payee = random_address(ctx.network)
    vtest_id = merchant_withdrawal(ctx, [(payee, APPROVED_SAT)])
    approval_id = _approval_request(ctx, seen, APPROVED_SAT)
    small_payee = random_address(ctx.network)
    behind = merchant_withdrawal(ctx, [(small_payee, BEHIND_SAT)])
    small = wait_site_finished(ctx, behind)
    if small["status"] != "sent":
        raise StepFailed(f"the withdrawal {behind} queued behind the held one is {small['status']}")
    if site_withdrawal(ctx, vtest_id)["status"] != "pending":
        raise StepFailed(f"the held withdrawal {vtest_id} did not keep waiting for the owner")
    small_height, _ = check_paid(ctx, small["tx_hash"], [(small_payee, BEHIND_SAT)])
    _owner_says(ctx, f"CC:APPROVE:{approval_id}:000000", "CC:REFUSED:wrong code")
    if site_withdrawal(ctx, vtest_id)["status"] != "pending":
        raise StepFailed("a wrong code released the send")
    _owner_says(ctx, f"CC:APPROVE:{approval_id}:{owner_code(ctx)}", f"CC:APPROVED:{approval_id}")
    w = wait_for(
        lambda: (x := site_withdrawal(ctx, vtest_id))["status"] != "pending" and x,
        90.0,
        f"the approved withdrawal {vtest_id} to be sent",
    )
    if w["status"] != "sent" or not w["tx_hash"]:
        raise StepFailed(f"the approved withdrawal {vtest_id} is {w['status']}")
    height, fee = check_paid(ctx, w["tx_hash"], [(payee, APPROVED_SAT)])
    return (
        f"the owner {declined}the merchant's {btc(APPROVED_SAT)} payout waited for approval "
        f"{approval_id} while {btc(BEHIND_SAT)} queued after it went (mined at height "
        f"{small_height}); a wrong code was refused; the owner's one-time code released it: "
        f"signed with the approval inside vc_code, co-signed by the cold HSM, mined at height "
        f"{height} (fee {fee} sat)"
    )
