"""Who froze an account and why, and custody's view following the HSMs' state.

Custody keeps its own record of each freeze (origin, reason, whether the HSMs were told) in
`service_state` (`freeze:<account>`). The worker polls the cold HSM's identity-signed account
states through the hot HSM and follows them: a freeze the cold HSM decided shows in custody
within seconds, and a freeze lifted at the cold console lifts custody's too. An operator's
freeze is lifted by `custody account unfreeze` (the cold HSM lifts its copy of it; it refuses
to lift a freeze of its own). Statements are verified against the cold identity key stored at
provisioning and must be fresh, so a relay can delay them but not forge or replay them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import journal
from custody.alerts import AlertKind, raise_alert
from custody.db import transaction
from custody.errors import AccountError, HsmRefusedError, HsmUnavailableError, NotFound
from custody.hsm_client import HsmError, HsmRefused
from custody.models import Account, AccountStatus, KeyValue, utcnow
from wallet_core.account_state import AccountState, FreezeOrigin
from wallet_core.messages import verify_message_pubkey

log = logging.getLogger(__name__)

KEY = "freeze:{}"
MAX_AGE = 300.0  # seconds: an older statement is not followed (a replay)
DEFAULT_INTERVAL = 2.0
RETRY_AFTER_FAILURE = 15.0  # seconds before asking a hot HSM again that did not answer


@dataclass(frozen=True)
class FreezeRecord:
    origin: FreezeOrigin
    reason: str
    at: str
    hsm_told: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.origin.value,
            "reason": self.reason,
            "at": self.at,
            "hsm_told": self.hsm_told,
        }


def get_record(session: Session, account_id: int) -> FreezeRecord | None:
    row = session.get(KeyValue, KEY.format(account_id))
    if row is None:
        return None
    try:
        raw = json.loads(row.value)
        return FreezeRecord(
            FreezeOrigin(raw["by"]), str(raw["reason"]), str(raw["at"]), bool(raw["hsm_told"])
        )
    except (ValueError, KeyError, TypeError):
        return None


def set_record(session: Session, account_id: int, record: FreezeRecord | None) -> None:
    key = KEY.format(account_id)
    row = session.get(KeyValue, key)
    if record is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(KeyValue(key=key, value=json.dumps(record.to_json())))
    else:
        row.value = json.dumps(record.to_json())
    session.flush()


def record_operator_freeze(session: Session, account_id: int, reason: str, told: bool) -> None:
    set_record(
        session,
        account_id,
        FreezeRecord(FreezeOrigin.OPERATOR, reason, utcnow().isoformat(), told),
    )


def describe(session: Session, account: Account) -> dict[str, Any]:
    """`frozen_by` etc. for `account show` and the API's views."""
    record = get_record(session, account.id)
    if account.status is not AccountStatus.FROZEN:
        return {"frozen": False}
    return {
        "frozen": True,
        "frozen_by": record.origin.value if record else "unknown",
        "frozen_reason": account.frozen_reason,
        "frozen_at": record.at if record else None,
    }


# -- following the cold HSM's signed state -------------------------------------------------------


def verify(account: Account, item: dict[str, Any], now: float) -> AccountState | None:
    """The state in `item` if its identity signature and freshness check out, else None."""
    try:
        state = AccountState(
            account=int(item["account"]),
            frozen=bool(item["frozen"]),
            origin=FreezeOrigin(str(item["origin"])),
            reason=str(item["reason"]),
            issued_at=int(item["issued_at"]),
        )
        signature = str(item["signature"])
        pubkey = bytes.fromhex(account.cold_identity_pubkey)
    except (KeyError, ValueError, TypeError):
        return None
    if state.account != account.id or abs(now - state.issued_at) > MAX_AGE:
        return None
    if not verify_message_pubkey(pubkey, state.statement(), signature):
        return None
    return state


def apply_state(
    session: Session, account: Account, state: AccountState, config: Config | None
) -> str | None:
    """Bring custody's view of `account` in line with the cold HSM; what changed, or None."""
    record = get_record(session, account.id)
    if state.frozen and account.status is not AccountStatus.FROZEN:
        reason = f"{state.origin.value.replace('_', ' ')}: {state.reason}"
        account.status = AccountStatus.FROZEN
        account.frozen_reason = reason[:500]
        set_record(
            session,
            account.id,
            FreezeRecord(state.origin, state.reason, utcnow().isoformat(), True),
        )
        journal.append(
            session,
            journal.JournalKind.ACCOUNT_FROZEN,
            account.id,
            {"reason": state.reason, "by": state.origin.value},
        )
        if config is not None:
            raise_alert(
                session,
                config,
                AlertKind.ACCOUNT_FROZEN,
                f"account frozen by the {state.origin.value.replace('_', ' ')}: {state.reason}",
                account.id,
            )
        return "frozen"
    if not state.frozen and account.status is AccountStatus.FROZEN:
        if record is not None and record.origin is FreezeOrigin.OPERATOR and not record.hsm_told:
            return None  # the HSMs never knew: only `custody account unfreeze` lifts it
        _unfreeze_locally(session, account, "lifted on the cold HSM", config)
        return "unfrozen"
    if state.frozen and record is not None and record.origin is not state.origin:
        set_record(
            session,
            account.id,
            FreezeRecord(state.origin, state.reason, record.at, True),
        )
    return None


def _unfreeze_locally(session: Session, account: Account, why: str, config: Config | None) -> None:
    account.status = AccountStatus.ACTIVE
    account.frozen_reason = ""
    set_record(session, account.id, None)
    journal.append(session, journal.JournalKind.ACCOUNT_UNFROZEN, account.id, {"reason": why})
    if config is not None:
        raise_alert(
            session, config, AlertKind.ACCOUNT_UNFROZEN, f"account unfrozen: {why}", account.id
        )


class FreezeFollower:
    """Polls the signed account states every `interval` seconds (the worker calls `step`)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        hsm: Any,
        config: Config | None,
        interval: float = DEFAULT_INTERVAL,
        clock: Any = time.monotonic,
    ) -> None:
        self.factory = factory
        self.hsm = hsm
        self.config = config
        self.interval = interval
        self.clock = clock
        self._next = 0.0

    def step(self, *, force: bool = False) -> list[tuple[int, str]]:
        now = self.clock()
        if not force and now < self._next:
            return []
        self._next = now + self.interval
        try:
            states = self.hsm.account_states()
        except (HsmError, HsmUnavailableError) as exc:
            log.info("account states: hot HSM did not answer: %s", exc.message)
            self._next = now + max(self.interval, RETRY_AFTER_FAILURE)  # no log flood
            return []
        return self.apply(states)

    def apply(self, states: list[dict[str, Any]]) -> list[tuple[int, str]]:
        changes: list[tuple[int, str]] = []
        wall = time.time()
        with transaction(self.factory) as s:
            accounts = {a.id: a for a in s.execute(select(Account)).scalars()}
            for item in states:
                account = accounts.get(item.get("account"))  # type: ignore[arg-type]
                if account is None:
                    continue
                state = verify(account, item, wall)
                if state is None:
                    log.warning("account %d: a state with a bad signature was ignored", account.id)
                    continue
                change = apply_state(s, account, state, self.config)
                if change is not None:
                    log.info("account %d %s (cold HSM: %s)", account.id, change, state.origin)
                    changes.append((account.id, change))
        return changes


# -- the operator's unfreeze ---------------------------------------------------------------------


def unfreeze_account(
    session: Session, hsm: Any, account_id: int, reason: str, config: Config | None = None
) -> str:
    """Lift an operator's freeze: the HSMs first (the cold HSM refuses to lift its own), then
    custody's view from the signed state the cold HSM answers with."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"account {account_id} does not exist")
    if account.status is not AccountStatus.FROZEN:
        return f"account {account_id} is not frozen"
    record = get_record(session, account_id)
    if record is not None and record.origin is not FreezeOrigin.OPERATOR:
        raise AccountError(
            f"account {account_id} was frozen by the {record.origin.value.replace('_', ' ')} "
            f"({account.frozen_reason}): only the cold console lifts it "
            f"(`hsm-cold unfreeze {account_id}`)"
        )
    reason = reason.strip() or "unfrozen by the operator"
    if record is not None and not record.hsm_told:
        _unfreeze_locally(session, account, reason, config)  # the HSMs never froze it
        return f"account {account_id} unfrozen (the HSMs had not been told of the freeze)"
    try:
        states = hsm.unfreeze(account_id, reason)
    except HsmRefused as exc:
        raise HsmRefusedError(f"the HSMs refused to unfreeze: {exc.message}") from None
    except HsmUnavailableError as exc:
        raise HsmUnavailableError(f"nothing changed: {exc.message}") from None
    wall = time.time()
    state = next((verify(account, i, wall) for i in states if i.get("account") == account_id), None)
    if state is None:
        raise HsmRefusedError("the cold HSM's answer was not a valid signed state; nothing changed")
    if state.frozen:
        apply_state(session, account, state, config)
        raise AccountError(f"account {account_id} is still frozen on the cold HSM: {state.reason}")
    _unfreeze_locally(session, account, reason, config)
    return f"account {account_id} unfrozen (custody and both HSMs)"
