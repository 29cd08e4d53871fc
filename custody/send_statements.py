"""The cold HSM's signed final word on a send, handed to the V-device with the send's state.

A hacked custody could tell the V-device "failed" for a send whose signed transaction it
broadcasts later; the site would mark the withdrawal failed and a merchant re-queuing it would
pay twice. So "failed" counts only with the cold HSM's statement, signed by its identity key:
"signed txid T for user_tx_no X" or "refused user_tx_no X with code C" (which also closes X on
the cold HSM: it never signs X afterwards). Custody only relays it; the V-device verifies it.

Statements are asked only for sends custody holds as final (OK or failed), or for a
`user_tx_no` custody holds no send for (refused at intake), and kept once obtained (a statement
never changes: a refused number stays closed, a signed one stays signed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from custody.errors import Conflict, HsmRefusedError, HsmUnavailableError
from custody.hsm_client import HsmRefused
from custody.insert_or_nothing import insert_or_nothing
from custody.models import KeyValue, Send, SendStatus

log = logging.getLogger(__name__)

FINAL = (SendStatus.BROADCAST, SendStatus.CONFIRMED, SendStatus.FAILED)


def _key(account_id: int, user_tx_no: str) -> str:
    """Its `service_state` key (at most 64 characters, whatever the `user_tx_no`)."""
    digest = hashlib.sha256(f"{account_id}:{user_tx_no}".encode()).hexdigest()
    return f"cold_statement:{digest[:48]}"


def _fetch(hsm: Any, account_id: int, user_tx_no: str) -> dict[str, Any]:
    try:
        answer = hsm.send_statement(account_id, user_tx_no)
    except HsmUnavailableError as exc:
        raise HsmUnavailableError(
            f"the cold HSM's statement is not available now: {exc.message}"
        ) from None
    except HsmRefused as exc:
        raise HsmRefusedError(f"no statement from the HSM (code {exc.code})") from None
    return {k: answer[k] for k in ("state", "txid", "code", "signature") if k in answer}


def statement(
    session: Session, hsm: Any, account_id: int, user_tx_no: str, send: Send | None
) -> dict[str, Any]:
    """The statement for `user_tx_no` (kept in `service_state` once obtained); `Conflict` if
    custody's send is still in progress (asking would close it on the cold HSM)."""
    if send is not None and SendStatus(send.status) not in FINAL:
        raise Conflict(f"send {user_tx_no} is still in progress: no final statement yet")
    key = _key(account_id, user_tx_no)
    row = session.get(KeyValue, key)
    if row is not None:
        return dict(json.loads(row.value))
    answer = _fetch(hsm, account_id, user_tx_no)
    # Two requests may ask at once: the cold HSM answers both the same, the first row stays.
    insert_or_nothing(session, KeyValue, key=key, value=json.dumps(answer, sort_keys=True))
    session.commit()
    log.info("account %d: cold statement for a send: %s", account_id, answer.get("state"))
    return answer
