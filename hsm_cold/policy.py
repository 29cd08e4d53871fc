"""The customer's spending policy, enforced inside the cold HSM (docs/threat-model.md).

- An account is *pending* from `provision_account` until the operator confirms it at the cold
  console (`hsm-cold confirm-account N --vdevice-fingerprint F`), the fingerprint having come
  from the customer's phone out of band: custody, which carried the V-device's identity key,
  cannot slip in its own. A pending account gets no channel, no batch proof, no signature.
  Confirming sets its first policy (the cold HSM's defaults, or the console's options).
- Every co-sign is judged against the policy in force (`cc_common.spending_policy.judge`):
  beyond a limit is refused; above the approval threshold it must carry the owner's approval.
- The approval is proven by what the V-device signed: `vc_code` over the request with
  `"owner_approved":1` inside, which the V-device signs only after the owner's TOTP
  `CC:APPROVE`. Nobody but the V-device holds the channel key, so a site or custody cannot
  add the flag, and a plain `vc_code` never counts as approved.
- Changes come by SMS from the V-device's number, signed by its identity key with a sequence
  number above the last (no replay): a tightening applies at once; a loosening waits the
  delay of the policy in force, is announced to the owner's phone, and is cancelled by the
  owner's `CC:POLICY_CANCEL:<id>` (cancelling only keeps the stricter policy, so the random
  id in the announcement is the whole authentication a cancel needs).
- Every change signed by the V-device is answered to the V-device's number with the cold HSM's
  signed word (`PolicyAck`: applied, pending until T, refused with a code), and so is a cancel
  and a loosening that applies: the phone's own copy follows the cold HSM's decision. A change
  sent again under the same `seq` (no answer reached the phone) changes nothing and is answered
  with its state now.
- A policy whose `loosen_delay` is below the cold HSM's floor (`[hsm_cold] min_loosen_delay`,
  10 s by default) is refused, at the console and by SMS: the floor is the cold side's to hold.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cc_common import fingerprint
from cc_common.spending_policy import (
    MIN_LOOSEN_DELAY,
    AckState,
    PolicyAck,
    PolicyFormatError,
    SpendHistory,
    SpendingPolicy,
    change_statement,
    judge,
    signed_forms,
)
from hsm_cold.cosign import CosignRequest
from hsm_cold.errors import (
    AccountPending,
    ApprovalMissing,
    ColdHsmError,
    PolicyChangeRefused,
    PolicyRefused,
    UnknownAccount,
)
from hsm_cold.policy_store import ChangeRow, ChangeState, PolicyStore
from hsm_cold.store import AccountRecord, ColdStore
from wallet_core import messages
from wallet_core.chaincloud import Out

log = logging.getLogger(__name__)

CHANGE_PREFIX = "CC:POLICY:"
CANCEL_PREFIX = "CC:POLICY_CANCEL:"
CHANGE_ID_BYTES = 4
_CHANGE = re.compile(r"CC:POLICY:([0-9]{1,10}):([0-9]{1,10}):([^:]{1,2000}):([A-Za-z0-9+/=]{88})")
_CANCEL = re.compile(r"CC:POLICY_CANCEL:([0-9a-f]{8})")

# (account, kind, message): the service's alert (recorded, texted to the owner).
Alert = Callable[[int, str, str], object]
# (account, ack): sign the ack with the identity key and text it to the account's V-device.
Answer = Callable[[int, PolicyAck], object]


@dataclass(frozen=True)
class ChangeOutcome:
    change_id: str
    applied: bool
    applies_at: float
    resent: bool = False


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


@functools.lru_cache(maxsize=256)
def policy_of(text: str) -> SpendingPolicy:
    """The policy a stored text says, parsed once per distinct text: every co-sign reads the
    account's policy, which changes rarely (a `SpendingPolicy` is frozen, so sharing it is
    safe; a text that does not parse raises each time, as it is not cached)."""
    return SpendingPolicy.from_text(text)


def signed_approval(req: CosignRequest, channel_pubkey: bytes) -> bool | None:
    """Check 3 with the approval: True if `vc_code` signs the approved form, False if the
    plain form, None if neither (a forged `vc_code`)."""
    plain, approved = signed_forms(req.request_string())
    if messages.verify_message_pubkey(channel_pubkey, plain, req.vc_code):
        return False
    if messages.verify_message_pubkey(channel_pubkey, approved, req.vc_code):
        return True
    return None


class ColdPolicies:
    """Pending accounts, the policy in force, co-sign judgement and signed changes."""

    def __init__(
        self,
        store: ColdStore,
        defaults: SpendingPolicy,
        random: Callable[[int], bytes],
        alert: Alert,
        clock: Callable[[], float] = time.time,
        answer: Answer | None = None,
        min_delay: int = MIN_LOOSEN_DELAY,
    ) -> None:
        self.store = store
        self.min_delay = min_delay
        self.rows = PolicyStore(store)
        self.defaults = defaults
        self.random = random
        self.alert = alert
        self.clock = clock
        self.answer = answer

    # -- confirmation ----------------------------------------------------------------------------

    def require_confirmed(self, account: int) -> None:
        if self.rows.get(account) is None:
            raise AccountPending(
                f"account {account} awaits its confirmation at the cold console"
                " (hsm-cold confirm-account)"
            )

    def confirm(
        self, rec: AccountRecord, typed_fingerprint: str, policy: SpendingPolicy | None
    ) -> SpendingPolicy:
        """The console's confirmation: the typed V-device fingerprint must match the key
        custody delivered; then the account gets its first policy."""
        if not fingerprint.matches(rec.vdevice_identity, typed_fingerprint):
            raise PolicyChangeRefused(
                f"the V-device fingerprint does not match account {rec.account}'s identity key"
                " (delivered by custody): do not confirm; check the phone and the account"
            )
        chosen = policy or self.defaults
        self._require_floor(chosen)
        held = self.rows.get(rec.account)
        if held is not None:
            return SpendingPolicy.from_text(held.policy)
        self.rows.confirm(
            rec.account,
            chosen.to_text(),
            fingerprint.fingerprint(rec.vdevice_identity),
            self.clock(),
        )
        log.info("account %d confirmed at the console; policy: %s", rec.account, chosen.to_text())
        return chosen

    def _require_floor(self, policy: SpendingPolicy) -> None:
        if policy.loosen_delay < self.min_delay:
            raise PolicyChangeRefused(
                f"loosen_delay {policy.loosen_delay}s is below this cold HSM's floor of"
                f" {self.min_delay}s"
            )

    def confirmed(self, records: Sequence[AccountRecord]) -> list[AccountRecord]:
        """The accounts among `records` that were confirmed at the console."""
        return [r for r in records if self.rows.get(r.account) is not None]

    # -- the policy in force ---------------------------------------------------------------------

    def current(self, account: int) -> SpendingPolicy:
        """The policy in force now (a loosening whose delay passed is applied first)."""
        for change in self.rows.apply_due(account, self.clock()):
            log.info("account %d: loosening %s applied after its delay", account, change.id)
            self.alert(account, "policy_changed", f"policy loosening {change.id} now applies")
            self._answer(account, change.seq, AckState.APPLIED, int(self.clock()))
        row = self.rows.get(account)
        if row is None:
            raise AccountPending(f"account {account} awaits its confirmation at the cold console")
        return policy_of(row.policy)

    def pending_changes(self, account: int | None = None) -> list[ChangeRow]:
        return self.rows.pending(account)

    # -- co-signing ------------------------------------------------------------------------------

    def check_send(self, account: int, outs: Sequence[Out], approved: bool) -> None:
        """Refuse a send the policy does not allow (alerting the owner: the V-device signed it,
        so either it is out of step with the cold policy or it was made to sign)."""
        self.check_batch(account, [(outs, approved)])

    def check_batch(self, account: int, sends: Sequence[tuple[Sequence[Out], bool]]) -> None:
        """Judge each send of one transaction in turn, each counting the ones before it (its
        amount in the day, one send in the hour, its destinations as paid): a batch gets no
        more than the same sends one by one would."""
        policy = self.current(account)
        every = [o.address for outs, _ in sends for o in outs]
        day, hour, paid = self.rows.window(account, self.clock(), every)
        for outs, approved in sends:
            self._judge(account, policy, outs, approved, SpendHistory(day, hour, paid))
            day += sum(o.value for o in outs)
            hour += 1
            paid = paid | {o.address for o in outs}

    def _judge(
        self,
        account: int,
        policy: SpendingPolicy,
        outs: Sequence[Out],
        approved: bool,
        history: SpendHistory,
    ) -> None:
        total = sum(o.value for o in outs)
        verdict = judge(policy, [o.address for o in outs], total, history)
        if verdict.refusal is not None:
            self.alert(account, "policy_refused", f"send refused by the policy: {verdict.refusal}")
            raise PolicyRefused(f"account {account}: {verdict.refusal}")
        if verdict.needs_approval and not approved:
            why = "; ".join(verdict.needs_approval)
            self.alert(account, "policy_refused", f"send without the owner's approval: {why}")
            raise ApprovalMissing(
                f"account {account}: the owner's approval is required ({why}) and the"
                " V-device's signature does not carry it"
            )

    def record_send(self, account: int, user_tx_no: str, outs: Sequence[Out]) -> None:
        self.rows.record_send(
            account, user_tx_no, sum(o.value for o in outs), [o.address for o in outs], self.clock()
        )

    # -- changes by SMS --------------------------------------------------------------------------

    def is_policy_text(self, text: str) -> bool:
        return text.strip().startswith((CHANGE_PREFIX, CANCEL_PREFIX))

    def handle_sms(self, sender: str, text: str) -> str:
        """A change from a V-device number or a cancel from an owner number; the outcome."""
        text = text.strip()
        try:
            if text.startswith(CANCEL_PREFIX):
                return self._cancel_sms(sender, text)
            return self._change_sms(sender, text)
        except ColdHsmError as exc:  # refused, stale, or the account is pending
            log.warning("policy SMS from %s refused: %s", sender, exc.message)
            return "policy_refused"

    def _change_sms(self, sender: str, text: str) -> str:
        m = _CHANGE.fullmatch(text)
        if m is None:
            raise PolicyChangeRefused("malformed policy change")
        account, seq, body, sig = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        rec = self.store.get_account(account)
        if rec is None or rec.vdevice_phone != sender:
            raise PolicyChangeRefused(f"account {account} has no V-device at this number")
        try:
            policy = SpendingPolicy.from_text(body)
        except PolicyFormatError as exc:
            raise PolicyChangeRefused(exc.message) from None
        outcome = self.change(rec, seq, policy, sig)
        if outcome.resent:
            return "policy_resent"
        return "policy_applied" if outcome.applied else "policy_pending"

    def change(
        self, rec: AccountRecord, seq: int, policy: SpendingPolicy, sig: str
    ) -> ChangeOutcome:
        """A change signed by the account's V-device identity key."""
        statement = change_statement(rec.account, seq, policy)
        if not messages.verify_message_pubkey(rec.vdevice_identity, statement, sig):
            self.alert(rec.account, "policy_refused", "policy change not signed by the V-device")
            raise PolicyChangeRefused(
                f"policy change {seq} is not signed by account {rec.account}'s V-device identity"
            )
        try:
            return self._signed_change(rec, seq, policy)
        except ColdHsmError as exc:  # the V-device signed it: it hears why it never applies
            self._answer(rec.account, seq, AckState.REFUSED, int(exc.code))
            raise

    def _signed_change(self, rec: AccountRecord, seq: int, policy: SpendingPolicy) -> ChangeOutcome:
        old = self.current(rec.account)
        known = self.rows.change_by_seq(rec.account, seq)
        if known is not None and known.policy == policy.to_text():
            self._answer_state(known)  # sent again (our answer was lost): its state now
            return ChangeOutcome(
                known.id, known.state is ChangeState.APPLIED, known.applies_at, True
            )
        self._require_floor(policy)
        now = self.clock()
        change_id = self._new_id()
        looser = policy.loosens(old)
        if not looser:
            if not self.rows.apply_now(rec.account, seq, policy.to_text(), change_id, now):
                raise PolicyChangeRefused(f"policy change {seq} is stale or replayed")
            self.alert(rec.account, "policy_changed", f"policy tightened: {policy.summary()}")
            self._answer(rec.account, seq, AckState.APPLIED, int(now))
            return ChangeOutcome(change_id, True, now)
        applies_at = now + old.loosen_delay
        if not self.rows.add_pending(
            rec.account, seq, policy.to_text(), change_id, now, applies_at
        ):
            raise PolicyChangeRefused(f"policy change {seq} is stale or replayed")
        self.alert(
            rec.account,
            "policy_loosening",
            f"policy loosening {change_id} requested ({', '.join(looser)}): {policy.summary()}."
            f" Applies {_utc(applies_at)}. To cancel reply {CANCEL_PREFIX}{change_id}",
        )
        self._answer(rec.account, seq, AckState.PENDING, int(applies_at))
        return ChangeOutcome(change_id, False, applies_at)

    def _cancel_sms(self, sender: str, text: str) -> str:
        m = _CANCEL.fullmatch(text)
        if m is None:
            raise PolicyChangeRefused("malformed policy cancel")
        change = self.rows.cancel(m.group(1), sender)
        if change is None:
            raise PolicyChangeRefused("no waiting policy change with this id for this owner")
        log.info("account %d: loosening %s cancelled by the owner", change.account, change.id)
        self.alert(change.account, "policy_cancelled", f"policy loosening {change.id} cancelled")
        self._answer(change.account, change.seq, AckState.CANCELLED, int(self.clock()))
        return "policy_cancelled"

    def _answer_state(self, change: ChangeRow) -> None:
        state = {
            ChangeState.APPLIED: AckState.APPLIED,
            ChangeState.PENDING: AckState.PENDING,
            ChangeState.CANCELLED: AckState.CANCELLED,
            ChangeState.SUPERSEDED: AckState.SUPERSEDED,
        }[change.state]
        detail = 0 if state is AckState.SUPERSEDED else int(change.applies_at)
        self._answer(change.account, change.seq, state, detail)

    def _answer(self, account: int, seq: int, state: AckState, detail: int) -> None:
        if self.answer is None:
            return
        try:
            self.answer(account, PolicyAck(account, seq, state, detail))
        except Exception:  # an SMS problem never changes what was decided
            log.exception("account %d: policy answer for change %d not queued", account, seq)

    def _new_id(self) -> str:
        while True:
            change_id = self.random(CHANGE_ID_BYTES).hex()
            if not self.rows.change_id_taken(change_id):
                return change_id


def account_or_refuse(store: ColdStore, account: int) -> AccountRecord:
    rec = store.get_account(account)
    if rec is None:
        raise UnknownAccount(f"account {account} is not provisioned on the cold HSM")
    return rec
