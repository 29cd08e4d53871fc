"""`sign_batch`: the hot side of a batched payout (several signed requests, one transaction).

The hot HSM reads the PSBT as for `sign_send`, holds each member to its own per-send limits
(and the whole transaction to the daily and fee limits), relays the compact `cosign_batch`
request, checks the cold signatures and adds its own. Whether the payments are exactly the
members' `outs` is the cold HSM's check, as for a single send: a tampered batch reaches it and
freezes the account there (a refusal here would let a hacked host probe without an alert).
Every member's `user_tx_no` is then answered by this PSBT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hsm_hot.compact import compact_request, inline_prev_txs, plan_cosign
from hsm_hot.errors import BadRequest
from hsm_hot.policy import SendCost
from wallet_core.chaincloud import parse_outs
from wallet_core.errors import PsbtError, WalletError
from wallet_core.psbt import Psbt

if TYPE_CHECKING:
    from hsm_hot.service import HotService

MAX_MEMBERS = 100


def _members(params: Mapping[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(request, vc_code, c_id) per member, type-checked, numbers distinct."""
    from hsm_hot.service import _param, _text, signed_request  # noqa: PLC0415 (cycle)

    raw = _param(params, "members", list)
    if not 2 <= len(raw) <= MAX_MEMBERS:
        raise BadRequest(f"a batch has 2 to {MAX_MEMBERS} members, not {len(raw)}")
    out = []
    for n, member in enumerate(raw):
        if not isinstance(member, dict):
            raise BadRequest(f"members[{n}] must be an object")
        try:
            req = signed_request(_param(member, "request", dict))
            out.append((req, _text(member, "vc_code", 256), _text(member, "c_id", 128)))
        except BadRequest as exc:
            raise BadRequest(f"members[{n}]: {exc.message}") from None
    numbers = [r["user_tx_no"] for r, _, _ in out]
    if len(set(numbers)) != len(numbers):
        raise BadRequest("a user_tx_no appears twice in the batch")
    return out


def sign(service: HotService, params: Mapping[str, Any]) -> dict[str, Any]:
    from hsm_hot.service import _account, _text  # noqa: PLC0415 (the service imports us)

    account = _account(params)
    acct = service._account_record(account)
    members = _members(params)
    for _ in members:  # each member is one signing request against the rate limit
        service.ledger.admit_request(account)
    try:
        psbt = Psbt.from_base64(_text(params, "psbt", 1_000_000))
    except PsbtError as exc:
        raise BadRequest(f"psbt: {exc.message}") from None
    numbers = [req["user_tx_no"] for req, _, _ in members]
    with service._send_locks.held((account, "batch:" + ",".join(sorted(numbers)))):
        done = [service.state.cosigned(account, n) for n in numbers]
        if all(d is not None and d[0] == psbt.txid for d in done):
            assert done[0] is not None
            return {"psbt": done[0][1]}
        plan = plan_cosign(psbt, service.state.wallet(acct))
        amounts = _member_costs(service, members)
        cost = SendCost(plan.payments, plan.fee, plan.vsize)
        reservation = service.ledger.reserve_batch(account, cost, amounts, plan.txid)
        try:
            if not inline_prev_txs(plan.prev_txs):
                service._teach_prev_txs(plan.prev_txs)
            shared = compact_request(account, plan, members[0][0], members[0][1], members[0][2])
            payload = {k: v for k, v in shared.items() if k in _SHARED}
            payload["members"] = [
                {
                    k: v
                    for k, v in compact_request(account, plan, req, vc, c_id).items()
                    if k not in _SHARED
                }
                for req, vc, c_id in members
            ]
            answer = service.relay.call("cosign_batch", payload)
            sigs = service._both_signatures(plan, acct, answer)
        except BaseException:
            service.ledger.cancel_send(reservation)
            raise
        signed = service._signed_psbt(psbt, plan, acct, sigs)
        for n in numbers:
            service.state.add_cosigned(account, n, plan.txid, signed)
        service._audit_plan("sign_batch", account, plan, user_tx_nos=numbers)
        return {"psbt": signed}


_SHARED = ("account", "tx", "inputs", "change", "prev_txs")


def _member_costs(
    service: HotService, members: list[tuple[dict[str, Any], str, str]]
) -> list[tuple[int, int]]:
    """(amount, outputs with a change) of each member's signed request, for the limits."""
    costs = []
    for n, (req, _, _) in enumerate(members):
        try:
            outs = parse_outs(req["outs"], service.network)
        except WalletError as exc:
            raise BadRequest(f"members[{n}]: outs: {exc.message}") from None
        costs.append((sum(o.value for o in outs), len(outs) + 1))
    return costs
