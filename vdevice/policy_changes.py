"""The owner changes the account's spending policy on the phone (`vdevice policy set`).

The phone signs the change with its identity key (`CC:POLICY:<account>:<seq>:<policy>:<sig>`)
and the loop texts it to the cold HSM, which alone decides (docs/threat-model.md). The phone
mirrors the cold HSM's rule for its own early checks: a tightening applies at once, a
loosening after the delay of the policy in force. (A loosening the owner cancels at the cold
HSM keeps applying on the phone after its delay; the cold HSM still refuses what it allows.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from cc_common.spending_policy import SpendingPolicy, change_statement
from vdevice.state import State
from wallet_core.messages import sign_message

log = logging.getLogger(__name__)

_POLICY = "policy"  # the policy in force on the phone (absent: the configuration's)
_WAITING = "policy_waiting"  # {"policy": text, "applies_at": unix}
_SEQ = "policy_seq"
_OUTBOX = "policy_outbox"  # the signed change not yet texted to the cold HSM


def current(state: State, configured: SpendingPolicy, now: float | None = None) -> SpendingPolicy:
    """The phone's policy now, applying a waiting loosening whose delay has passed."""
    waiting = state.get_meta(_WAITING)
    if waiting:
        item = json.loads(waiting)
        if (time.time() if now is None else now) >= float(item["applies_at"]):
            with state.tx():
                state.set_meta(_POLICY, item["policy"])
                state.set_meta(_WAITING, "")
    text = state.get_meta(_POLICY)
    return SpendingPolicy.from_text(text) if text else configured


def request(
    state: State, account: int, configured: SpendingPolicy, new: SpendingPolicy
) -> tuple[str, bool]:
    """Sign the change, queue it for the cold HSM, apply it here as the cold HSM will;
    (the SMS text, whether it applied at once)."""
    old = current(state, configured)
    now = time.time()
    with state.tx():
        seq = int(state.get_meta(_SEQ) or 0) + 1
        statement = change_statement(account, seq, new)
        text = f"{statement}:{sign_message(state.identity_priv(), statement)}"
        state.set_meta(_SEQ, str(seq))
        state.set_meta(_OUTBOX, text)
        now_applies = not new.loosens(old)
        if now_applies:
            state.set_meta(_POLICY, new.to_text())
            state.set_meta(_WAITING, "")
        else:
            waiting = {"policy": new.to_text(), "applies_at": now + old.loosen_delay}
            state.set_meta(_WAITING, json.dumps(waiting))
    return text, now_applies


def send_outbox(state: State, send: Callable[[str], bool]) -> None:
    """The loop's step: text a signed change to the cold HSM (kept until it left the modem)."""
    text = state.get_meta(_OUTBOX)
    if text and send(text):
        with state.tx():
            state.set_meta(_OUTBOX, "")
        log.info("policy change sent to the cold HSM")
