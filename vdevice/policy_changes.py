"""The owner changes the account's spending policy on the phone (`vdevice policy set`).

The phone signs the change with its identity key (`CC:POLICY:<account>:<seq>:<policy>:<sig>`)
and the loop texts it to the cold HSM, which alone decides (docs/threat-model.md) and answers
with its signed word (`CC:POLICY_ACK`, docs/sms-channel.md): applied, pending until T,
cancelled by the owner, superseded, or refused with a code. The phone's own copy follows that
word, never runs ahead of it:
- a tightening applies here at once (the phone may only be stricter than the cold HSM);
- a loosening applies here only on the cold HSM's signed "applied": after the delay the phone
  texts the same change again (same `seq`, so the cold HSM changes nothing and only answers
  its state), so a loosening the owner cancelled never applies on the phone either;
- a change with no answer is texted again, with backoff (idempotent by `seq`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from cc_common.spending_policy import (
    AckState,
    PolicyAck,
    PolicyFormatError,
    SpendingPolicy,
    change_statement,
)
from vdevice.state import State
from wallet_core.messages import sign_message, verify_message_pubkey

log = logging.getLogger(__name__)

_POLICY = "policy"  # the policy in force on the phone (absent: the configuration's)
_SEQ = "policy_seq"
_CHANGE = "policy_change"  # the last change asked for: `Change` as JSON
RESEND_MAX = 3600.0  # the longest wait between two texts of an unanswered change
WAITING = "waiting"  # not answered yet (or pending: asked again at `applies_at`)
FINAL = frozenset(
    s.value for s in (AckState.APPLIED, AckState.CANCELLED, AckState.SUPERSEDED, AckState.REFUSED)
)


@dataclass(frozen=True)
class Change:
    """The last change the owner asked for, and what the cold HSM said of it."""

    seq: int
    text: str  # the signed SMS, texted again byte for byte
    policy: str
    loosens: bool
    state: str  # WAITING, or an `AckState` value
    detail: int = 0  # from the answer: applies_at, or the refusal's code
    sends: int = 0
    next_send_at: float = 0.0
    answered_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["text"]
        return out


def current(state: State, configured: SpendingPolicy) -> SpendingPolicy:
    """The phone's policy now: the configured one, or the last one the cold HSM applied
    (a tightening at once)."""
    text = state.get_meta(_POLICY)
    return SpendingPolicy.from_text(text) if text else configured


def last_change(state: State) -> Change | None:
    text = state.get_meta(_CHANGE)
    return Change(**json.loads(text)) if text else None


def _save(state: State, change: Change) -> None:
    state.set_meta(_CHANGE, json.dumps(asdict(change)))


def request(
    state: State, account: int, configured: SpendingPolicy, new: SpendingPolicy
) -> tuple[str, bool]:
    """Sign the change and queue it for the cold HSM; a tightening applies here at once;
    (the SMS text, whether it applied at once)."""
    old = current(state, configured)
    with state.tx():
        seq = int(state.get_meta(_SEQ) or 0) + 1
        statement = change_statement(account, seq, new)
        text = f"{statement}:{sign_message(state.identity_priv(), statement)}"
        state.set_meta(_SEQ, str(seq))
        loosens = bool(new.loosens(old))
        if not loosens:
            state.set_meta(_POLICY, new.to_text())
        _save(state, Change(seq, text, new.to_text(), loosens, WAITING))
    return text, not loosens


def tick(state: State, send: Callable[[str], bool], reply_timeout: float, now: float) -> None:
    """The loop's step: text the change while it has no answer (and a pending loosening again
    once its delay has passed, to hear whether it applied)."""
    change = last_change(state)
    if change is None or change.state in FINAL or now < change.next_send_at:
        return
    if not send(change.text):
        return
    wait = min(reply_timeout * 2 ** min(change.sends, 12), RESEND_MAX)
    if change.state == AckState.PENDING:
        wait = max(wait, change.detail - now + 1)
    with state.tx():
        fresh = last_change(state)
        if fresh is not None and fresh.seq == change.seq and fresh.state == change.state:
            _save(state, replace(fresh, sends=fresh.sends + 1, next_send_at=now + wait))
    log.info("policy change %d sent to the cold HSM (text %d)", change.seq, change.sends + 1)


def on_ack(
    state: State, cold_identity: bytes, account: int, text: str, now: float
) -> PolicyAck | None:
    """The cold HSM's signed answer; the ack if it was taken (signed by the cold identity,
    for this account and the change asked for last, and not after a final answer)."""
    try:
        ack, sig = PolicyAck.parse(text)
    except PolicyFormatError as exc:
        log.warning("policy answer refused: %s", exc.message)
        return None
    if ack.account != account or not verify_message_pubkey(cold_identity, ack.statement(), sig):
        log.warning("policy answer for change %d refused: not signed for this account", ack.seq)
        return None
    with state.tx():
        change = last_change(state)
        if change is None or change.seq != ack.seq:
            log.info("policy answer for change %d: not the last change; ignored", ack.seq)
            return None
        if change.state in FINAL:
            return None  # a repeated or late answer: the first final word stands
        if ack.state is AckState.APPLIED and change.loosens:
            state.set_meta(_POLICY, change.policy)
        next_at, sends = 0.0, change.sends
        if ack.state is AckState.PENDING:  # ask again once it is due, never sooner than planned
            next_at = max(ack.detail + 1.0, change.next_send_at)
            sends = 0 if change.state == WAITING else change.sends
        _save(
            state,
            replace(
                change,
                state=ack.state.value,
                detail=ack.detail,
                answered_at=now,
                next_send_at=next_at,
                sends=sends,
            ),
        )
    log.info("policy change %d: the cold HSM says %s", ack.seq, ack.state.value)
    return ack


def describe(change: Change | None) -> str:
    """One line for `vdevice policy` and the status."""
    if change is None:
        return "none"
    kind = "loosening" if change.loosens else "tightening"
    if change.state == WAITING:
        return f"{kind} {change.seq}: sent {change.sends} time(s), no answer from the cold HSM yet"
    if change.state == AckState.PENDING:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(change.detail))
        return f"{kind} {change.seq}: pending at the cold HSM until {at}"
    if change.state == AckState.REFUSED:
        return f"{kind} {change.seq}: refused by the cold HSM (code {change.detail})"
    return f"{kind} {change.seq}: {change.state} (cold HSM)"
