"""Link commands about an account's freeze: its signed state, and lifting an operator's freeze.

A freeze the cold HSM decided itself (a send the V-device did not sign, ...) is lifted only
at the cold console (`hsm-cold unfreeze`); a freeze the operator asked for through the hot
side may be lifted the same way it came. Every state is signed with the identity key, so
custody can follow it without trusting the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hsm_cold.cosign import text_field
from hsm_cold.errors import AccountFrozen, BadRequest, UnknownAccount
from hsm_cold.store import AccountRecord, ColdStore
from wallet_core.account_state import AccountState, FreezeOrigin, cold_origin

log = logging.getLogger(__name__)

MAX_ACCOUNTS = 1000  # per call (the link's frame limit)


def state_of(rec: AccountRecord, now: float) -> AccountState:
    return AccountState(
        account=rec.account,
        frozen=rec.frozen,
        origin=cold_origin(rec.frozen, rec.frozen_reason),
        reason=rec.frozen_reason,
        issued_at=int(now),
    )


def account_states(
    store: ColdStore, sign: Callable[[str], str], payload: dict[str, Any], now: float
) -> dict[str, Any]:
    """Signed states of the listed accounts (all provisioned ones when none is listed)."""
    wanted = payload.get("accounts")
    if wanted is None:
        numbers = [a for a, _, _ in store.list_accounts()]
    elif isinstance(wanted, list) and all(
        isinstance(a, int) and not isinstance(a, bool) for a in wanted
    ):
        numbers = list(wanted)
    else:
        raise BadRequest("accounts must be a list of account numbers")
    if len(numbers) > MAX_ACCOUNTS:
        raise BadRequest(f"at most {MAX_ACCOUNTS} accounts per call")
    states = []
    for number in numbers:
        rec = store.get_account(number)
        if rec is None:
            continue
        state = state_of(rec, now)
        states.append(
            {
                "account": state.account,
                "frozen": state.frozen,
                "origin": state.origin.value,
                "reason": state.reason,
                "issued_at": state.issued_at,
                "signature": sign(state.statement()),
            }
        )
    return {"states": states}


def lift_operator_freeze(store: ColdStore, payload: dict[str, Any], account: int) -> bool:
    """Unfreeze `account` if the operator froze it (through the hot side); a cold freeze
    stays, refused with `AccountFrozen`. Returns whether a freeze was lifted."""
    reason = text_field(payload, "reason", 500)
    rec = store.get_account(account)
    if rec is None:
        raise UnknownAccount(f"account {account} is not provisioned on the cold HSM")
    if not rec.frozen:
        return False
    if cold_origin(rec.frozen, rec.frozen_reason) is not FreezeOrigin.OPERATOR:
        raise AccountFrozen(
            f"account {account} was frozen by the cold HSM ({rec.frozen_reason}): "
            "only the cold console lifts it"
        )
    store.set_frozen(account, False)
    log.warning("account %d: operator freeze lifted from the hot side: %s", account, reason)
    return True
