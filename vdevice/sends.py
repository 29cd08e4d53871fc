"""Countersigned hot sends (reference section 5 step 2).

For the oldest withdrawal the site has not seen handled: decrypt `vtest_info`, check every
output, apply the local policies, sign `vc_code` with the current channel key over the
canonical request string, `POST /tx/request`, poll `GET /tx/<user_tx_no>`, report the
`tx_hash` (or the failure) to the site.

The state of a send (`state.SendState`) and why a crash never makes a second request:

    (new vtest) --refused locally--> FINISHED(failed) --site acknowledged--> REPORTED
    (new vtest) --signed, stored--> SIGNED --custody accepted or code 3--> POSTED
    POSTED --custody: OK / failed--> FINISHED --site acknowledged--> REPORTED
    SIGNED --custody refused (4xx other than 3)--> FINISHED(failed)

- "failed" only with proof: custody's "failed" (or its refusal of the POST) becomes
  FINISHED(failed) only with the cold HSM's statement "refused user_tx_no X with code C",
  signed by its identity key (which closes X on the cold HSM for good); with "signed txid T"
  the site is told T; without a valid statement the outcome is unknown: the send stays POSTED,
  nothing is reported, the owner is alerted once, and custody is asked again with backoff.

- The request (outs, user_tx_no, dynamic, c_id, vc_code) is written as SIGNED in one
  transaction *before* it is posted. After a crash the stored request is posted again,
  byte for byte; custody answers code 3 if it already had it. There is never a second
  signature for a vtest: a vtest with a row is never decrypted or signed again.
- `user_tx_no` is a pure function of `vtest_id`, so even a lost row could not make custody
  accept a second send for the same withdrawal (custody is idempotent on `user_tx_no`).
- On start every SIGNED or POSTED send is set back to SIGNED: re-posting is the check that
  custody really has it.
- The outcome is written (FINISHED) before the site is told; the site accepts the same
  report twice, so a crash between the two only repeats the report.
- The site keeps offering a vtest until it is reported. Up to `[vdevice] max_in_flight`
  vtests are handled at once (so custody can batch them): each pass advances every active
  send, then asks the site for more past the in-flight and held ones (`?skip=`). A site that
  ignores `skip` offers an in-flight vtest again: that is waited on, never reported again.
  The spending policy counts each send as it is signed, so sends signed together add up.
  A send held for the owner's approval is set aside (`approvals.py`): the site is asked for
  the next one past it, and it is taken up again, first, once the owner has answered.
- After a fee bump the cold HSM texts its signed "co-signed txid T for user_tx_no X"
  (`CC:SEND_SIGNED:...`); the phone checks it with the cold identity key and records T as the
  send's transaction (the one it replaced is kept in `replacements`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from cc_common.spending_policy import approved_request_string
from cc_common.vtest import VtestDecryptError, open_vtest
from vdevice.approvals import SendPolicy
from vdevice.channel import ChannelKeeper
from vdevice.errors import RemoteError, RemoteRefused
from vdevice.phone import Phone
from vdevice.remote import CODE_UNKNOWN_CHANNEL, CustodyClient, SiteClient
from vdevice.settings import Settings
from vdevice.state import LoopState, Outcome, SendState, State
from wallet_core.chaincloud import (
    SendVerdict,
    parse_outs,
    send_request_string,
    verify_send_statement,
)
from wallet_core.errors import WalletError
from wallet_core.messages import sign_message

log = logging.getLogger(__name__)

COIN = "BTC"
DECRYPT_ERROR = "AES decrypt error"
OUT_INVALID = "tx out invalid"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")
MAX_USER_TX_NO = 64
PENDING_ALERT_AFTER = 3600.0
CHANNEL_RETRIES = 8  # posts refused as "unknown channel" before the send is given up


def user_tx_no_for(vtest_id: str) -> str:
    """The `user_tx_no` of a vtest: its id if it is short and plain, else a fixed hash of it."""
    if _PLAIN_ID.fullmatch(vtest_id):
        return vtest_id
    return "vt-" + hashlib.sha256(vtest_id.encode()).hexdigest()[: MAX_USER_TX_NO - 3]


class Refusal(Exception):
    """The V-device refuses a vtest: `alert` goes to the owner, `reason` to the state."""

    def __init__(self, reason: str, alert: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class SendProcessor:
    """Vtests from the site's queue to a reported outcome, up to `max_in_flight` at once."""

    def __init__(
        self,
        state: State,
        phone: Phone,
        channels: ChannelKeeper,
        site: SiteClient,
        custody: CustodyClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.phone = phone
        self.channels = channels
        self.site = site
        self.custody = custody
        self.settings = settings
        self.clock = clock
        self.policy = SendPolicy(
            state, phone, settings.policies.spending, settings.approval_timeout
        )

    # ----- start-up ------------------------------------------------------------------------

    def resume(self) -> int:
        """After a (re)start: every send custody may hold is posted again; how many."""
        with self.state.tx():
            cur = self.state.db.execute(
                "UPDATE sends SET state = ?, next_try_at = 0, tries = 0 WHERE state IN (?, ?)",
                (SendState.SIGNED, SendState.SIGNED, SendState.POSTED),
            )
        if cur.rowcount:
            log.info("resuming %d send(s) signed before the restart", cur.rowcount)
        return cur.rowcount

    # ----- the loop step -------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        active = self.state.db.execute(
            "SELECT * FROM sends WHERE state IN (?, ?, ?) ORDER BY created_at",
            (SendState.SIGNED, SendState.POSTED, SendState.FINISHED),
        ).fetchall()
        for row in active:
            self._advance(row, now)
        in_flight = [str(r["vtest_id"]) for r in active]
        # Counted before advancing, so with max_in_flight = 1 a send reported in this pass
        # lets the next withdrawal in only on the next pass (one at a time, as always).
        for _ in range(self.settings.max_in_flight - len(in_flight)):
            taken = self._take(now, in_flight)
            if taken is None or self.state.loop_state()[0] is not LoopState.RUNNING:
                return  # nothing to take now, or stopped (a vtest that does not decrypt)
            in_flight.append(taken)

    def _take(self, now: float, in_flight: list[str]) -> str | None:
        """Take one more withdrawal (an answered held send first): its vtest id once it is
        signed, refused or held; None when there is nothing to take now."""
        answered = self.policy.due(now)  # a held send the owner answered goes first
        if answered is not None:
            self._new(answered[0], answered[1], now)
            return answered[0] if self._row(answered[0]) is not None else None
        held = self.policy.waiting(now)
        body = self.site.pending_vtest([*held, *in_flight])
        if not body:
            return None
        vtest_id = body.get("vtest_id")
        if not isinstance(vtest_id, str) or not vtest_id or len(vtest_id) > 200:
            raise ValueError("the site's vtest has no usable vtest_id")
        known = self._row(vtest_id)
        if known is not None:
            if known["state"] != SendState.REPORTED:
                return None  # a site that does not skip offers an in-flight send: wait for it
            # Reported already, yet offered again (its report was lost): report it again.
            log.info("vtest %s: already handled; reporting again", vtest_id)
            self._set(vtest_id, state=SendState.FINISHED, next_try_at=0)
            return None
        if vtest_id in held:
            return None  # a site that does not skip: the held send is offered until answered
        self._new(vtest_id, body.get("vtest_info"), now)
        if self._row(vtest_id) is None and vtest_id not in self.policy.waiting(now):
            return None  # no usable channel yet: the site keeps offering it
        return vtest_id

    def _row(self, vtest_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.state.db.execute(
            "SELECT * FROM sends WHERE vtest_id = ?", (vtest_id,)
        ).fetchone()
        return row

    def _set(self, vtest_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.state.tx():
            self.state.db.execute(
                f"UPDATE sends SET {cols} WHERE vtest_id = ?",  # noqa: S608 (our column names)
                (*fields.values(), vtest_id),
            )

    # ----- a new vtest ---------------------------------------------------------------------

    def _new(self, vtest_id: str, blob: Any, now: float) -> None:
        channel = self.channels.usable(now)
        if channel is None:
            return  # the channel keeper is opening one; the site keeps offering the vtest
        user_tx_no = user_tx_no_for(vtest_id)
        try:
            try:
                req = open_vtest(
                    blob if isinstance(blob, str) else "", self.settings.vtest_password
                )
            except VtestDecryptError as exc:
                log.warning("vtest %s: decrypt failed (%s)", vtest_id, exc.reason)
                raise Refusal(DECRYPT_ERROR, f"{DECRYPT_ERROR}: vtest {vtest_id} refused") from None
            try:
                outs = parse_outs(req.outs, self.settings.network, allow_zero=True)
                request = send_request_string(
                    req.outs, user_tx_no, coin_code=COIN, is_dynamic_fee=req.dynamic
                )
            except WalletError as exc:
                log.warning("vtest %s: %s: %s", vtest_id, OUT_INVALID, exc.message)
                raise Refusal(OUT_INVALID, f"{OUT_INVALID}: vtest {vtest_id} refused") from None
            total = sum(o.value for o in outs)
            decision = self.policy.decide(
                vtest_id,
                req.outs,
                [o.address for o in outs],
                total,
                now,
                blob if isinstance(blob, str) else "",
            )
            if decision.refusal is not None:
                raise Refusal(
                    f"policy: {decision.refusal}",
                    f"policy: vtest {vtest_id} refused, {decision.refusal}",
                )
        except Refusal as refusal:
            self._refuse(vtest_id, user_tx_no, refusal, now)
            if refusal.reason == DECRYPT_ERROR:
                self.state.set_loop_state(LoopState.STOPPED, DECRYPT_ERROR)
                log.warning("loop stopped (%s) until the owner sends CC:START_LOOP", DECRYPT_ERROR)
            return
        if decision.held:
            return  # the owner was asked; the queue goes on past it meanwhile
        self._check_balance()
        if decision.approved:  # the owner's approval goes inside what the channel key signs
            request = approved_request_string(request)
        vc_code = sign_message(channel.v_priv, request)
        with self.state.tx():
            self.state.db.execute(
                "INSERT INTO sends(vtest_id, user_tx_no, outs, dynamic, total_sat, c_id, vc_code, "
                "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    vtest_id,
                    user_tx_no,
                    req.outs,
                    req.dynamic,
                    total,
                    channel.c_id,
                    vc_code,
                    SendState.SIGNED,
                    now,
                ),
            )
        log.info("vtest %s: signed as %s under channel %s", vtest_id, user_tx_no, channel.c_id)
        row = self._row(vtest_id)
        assert row is not None
        self._advance(row, now)

    def _check_balance(self) -> None:
        limit = self.settings.policies.low_balance_sat
        if not limit:
            return
        try:
            balance = self.custody.user().get("balance")
        except (RemoteError, RemoteRefused) as exc:
            log.warning("balance check: %s", exc.message)
            return
        if isinstance(balance, int) and balance < limit:
            self.phone.alert_once("balance-low", f"balance low: hot balance {balance} sat")
        elif isinstance(balance, int):
            self.phone.clear("balance-low")

    def _refuse(self, vtest_id: str, user_tx_no: str, refusal: Refusal, now: float) -> None:
        with self.state.tx():
            self.state.db.execute(
                "INSERT INTO sends(vtest_id, user_tx_no, outs, dynamic, total_sat, c_id, vc_code, "
                "state, outcome, reason, created_at, finished_at) "
                "VALUES (?, ?, '', 0, 0, '', '', ?, ?, ?, ?, ?)",
                (
                    vtest_id,
                    user_tx_no,
                    SendState.FINISHED,
                    Outcome.FAILED,
                    refusal.reason,
                    now,
                    now,
                ),
            )
        self.phone.alert(refusal.alert)
        row = self._row(vtest_id)
        assert row is not None
        self._advance(row, now)

    # ----- moving a send along -------------------------------------------------------------

    def _backoff(self, tries: int) -> float:
        return float(
            min(
                self.settings.tx_poll_max_interval,
                self.settings.poll_interval * 2 ** min(tries, 12),
            )
        )

    def _advance(self, row: sqlite3.Row, now: float) -> None:
        if now < row["next_try_at"]:
            return
        state = SendState(row["state"])
        try:
            if state is SendState.SIGNED:
                self._post(row, now)
            elif state is SendState.POSTED:
                self._poll(row, now)
            elif state is SendState.FINISHED:
                self._report(row, now)
        except RemoteError as exc:
            tries = row["tries"] + 1
            log.warning("vtest %s (%s): %s; retrying", row["vtest_id"], state, exc.message)
            self._set(row["vtest_id"], tries=tries, next_try_at=now + self._backoff(tries))

    def _post(self, row: sqlite3.Row, now: float) -> None:
        form = {
            "coin_code": COIN,
            "user_tx_no": row["user_tx_no"],
            "outs": row["outs"],
            "is_dynamic_fee": str(row["dynamic"]),
            "vc_code": row["vc_code"],
            "c_id": row["c_id"],
        }
        self._set(row["vtest_id"], posts=row["posts"] + 1)
        try:
            fresh = self.custody.request_send(form)
        except RemoteRefused as exc:
            if exc.remote_code == CODE_UNKNOWN_CHANNEL and row["tries"] < CHANNEL_RETRIES:
                self._channel_not_live_yet(row, now)
                return
            self._conclude_failed(row, f"custody refused: {exc.message}", None, now)
            return
        log.info(
            "vtest %s: custody %s the request",
            row["vtest_id"],
            "accepted" if fresh else "already had",
        )
        self._set(row["vtest_id"], state=SendState.POSTED, posted_at=now, tries=0, next_try_at=now)

    def _poll(self, row: sqlite3.Row, now: float) -> None:
        try:
            answer = self.custody.send_state(row["user_tx_no"])
        except RemoteRefused as exc:
            if exc.status == 404:
                log.warning("vtest %s: custody does not know it; posting again", row["vtest_id"])
                self._set(row["vtest_id"], state=SendState.SIGNED, next_try_at=now)
                return
            raise RemoteError(exc.message, status=exc.status) from None
        status = answer.get("hot_wallet_tx_status")
        if status == "OK" and isinstance(answer.get("tx_hash"), str) and answer["tx_hash"]:
            verdict = self._verdict(row, answer.get("cold_statement"))
            txid = answer["tx_hash"]
            if verdict is not None and verdict.signed and verdict.txid != txid:
                log.warning(
                    "vtest %s: custody's tx_hash is not the one the cold HSM signed",
                    row["vtest_id"],
                )
                txid = verdict.txid
            if verdict is not None and not verdict.signed:
                self._unknown(row, "custody says OK but the cold HSM says it refused", now)
                return
            self._finish(row, Outcome.OK, txid, "", now)
            return
        if status == "failed":
            reason = answer.get("failure_reason") or "the send failed"
            self._conclude_failed(row, f"custody: {reason}", answer.get("cold_statement"), now)
            return
        tries = row["tries"] + 1
        if row["posted_at"] and now - row["posted_at"] > PENDING_ALERT_AFTER:
            self.phone.alert_once(
                f"send-slow-{row['vtest_id']}",
                f"send {row['vtest_id']}: still pending at custody after an hour",
            )
        self._set(row["vtest_id"], tries=tries, next_try_at=now + self._backoff(tries))

    def _channel_not_live_yet(self, row: sqlite3.Row, now: float) -> None:
        """The cold HSM does not list the channel as live yet (our `CHANNEL_OK` is still on its
        way, or was lost): send it again and post the same signed request again later."""
        channel = self.state.channel(row["c_id"])
        if channel is not None:
            self.channels.resend_channel_ok(channel)
        tries = row["tries"] + 1
        log.warning(
            "vtest %s: channel %s not live at the cold HSM yet", row["vtest_id"], row["c_id"]
        )
        self._set(row["vtest_id"], tries=tries, next_try_at=now + self._backoff(tries))

    def _verdict(self, row: sqlite3.Row, statement: Any) -> SendVerdict | None:
        """The cold HSM's statement on this send, if its identity key signed it for exactly
        this account and `user_tx_no`."""
        prov = self.state.provisioning()
        return verify_send_statement(
            prov.cold_identity, prov.account_id, row["user_tx_no"], statement
        )

    def _conclude_failed(self, row: sqlite3.Row, reason: str, statement: Any, now: float) -> None:
        """Custody says the send failed. The site hears "failed" only on the cold HSM's signed
        "refused" (which closed the number: it can never be signed later); on its "signed
        txid T" the site hears T; with no valid statement the outcome is unknown: nothing is
        reported, the owner is alerted once, and custody is asked again later."""
        if statement is None:
            try:
                statement = self.custody.send_statement(row["user_tx_no"])
            except (RemoteRefused, RemoteError) as exc:  # unknown for now: asked again later
                log.warning("vtest %s: no cold statement: %s", row["vtest_id"], exc.message)
        verdict = self._verdict(row, statement)
        if verdict is None:
            self._unknown(row, reason, now)
        elif verdict.signed:
            log.warning(
                "vtest %s: custody says failed, but the cold HSM signed %s: reporting it",
                row["vtest_id"],
                verdict.txid,
            )
            self._finish(row, Outcome.OK, verdict.txid, "", now)
        else:
            proof = f"{reason} (cold HSM: refused, code {verdict.code})"
            self._finish(row, Outcome.FAILED, "", proof, now)

    def _unknown(self, row: sqlite3.Row, reason: str, now: float) -> None:
        tries = row["tries"] + 1
        log.warning("vtest %s: outcome unknown (%s): not reported", row["vtest_id"], reason)
        self.phone.alert_once(
            f"send-unproven-{row['vtest_id']}",
            f"send {row['vtest_id']}: {reason}, without the cold HSM's proof: not reported",
        )
        self._set(
            row["vtest_id"],
            state=SendState.POSTED,
            tries=tries,
            next_try_at=now + self._backoff(tries),
        )

    def _finish(
        self, row: sqlite3.Row, outcome: Outcome, tx_hash: str, reason: str, now: float
    ) -> None:
        self._set(
            row["vtest_id"],
            state=SendState.FINISHED,
            outcome=outcome,
            tx_hash=tx_hash,
            reason=reason,
            finished_at=now,
            tries=0,
            next_try_at=0,
        )
        if outcome is Outcome.OK:
            log.info("vtest %s: sent in %s", row["vtest_id"], tx_hash)
        else:
            log.warning("vtest %s: failed: %s", row["vtest_id"], reason)
            self.phone.alert(f"send {row['vtest_id']} failed: {reason}")
        fresh = self._row(row["vtest_id"])
        assert fresh is not None
        self._report(fresh, now)

    def _report(self, row: sqlite3.Row, now: float) -> None:
        try:
            self.site.report_vtest(row["vtest_id"], row["tx_hash"])
        except RemoteRefused as exc:
            log.warning("vtest %s: the site refused the report: %s", row["vtest_id"], exc.message)
            self.phone.alert(f"vtest {row['vtest_id']}: the site refused the outcome")
        self._set(row["vtest_id"], state=SendState.REPORTED, reported_at=now)
        log.info("vtest %s: reported (%s)", row["vtest_id"], row["outcome"] or "?")

    # ----- a fee bump's new transaction ------------------------------------------------------

    def on_replaced(self, text: str, now: float) -> bool:
        """The cold HSM's signed `CC:SEND_SIGNED:<account>:<txid>:<user_tx_no>:<sig>` after it
        co-signed a replacement: the send's transaction is now `txid`. False if refused."""
        m = _SIGNED_NOTICE.fullmatch(text.strip())
        prov = self.state.provisioning()
        if m is None or int(m.group(1)) != prov.account_id:
            log.warning("replacement notice refused: malformed or for another account")
            return False
        txid, user_tx_no, sig = m.group(2), m.group(3), m.group(4)
        statement = {"state": "signed", "txid": txid, "signature": sig}
        verdict = verify_send_statement(prov.cold_identity, prov.account_id, user_tx_no, statement)
        if verdict is None:
            log.warning(
                "replacement notice for %s refused: not the cold HSM's signature", user_tx_no
            )
            return False
        with self.state.tx():
            self.state.db.execute(REPLACEMENTS_SCHEMA)
            row = self.state.db.execute(
                "SELECT * FROM sends WHERE user_tx_no = ?", (user_tx_no,)
            ).fetchone()
            if row is None or row["tx_hash"] == txid:
                return row is not None
            self.state.db.execute(
                "INSERT OR IGNORE INTO replacements(user_tx_no, txid, replaced_txid, at)"
                " VALUES (?, ?, ?, ?)",
                (user_tx_no, txid, row["tx_hash"], now),
            )
            if row["tx_hash"]:  # finished: the send is paid by the replacement now
                self.state.db.execute(
                    "UPDATE sends SET tx_hash = ? WHERE user_tx_no = ?", (txid, user_tx_no)
                )
        log.info("send %s: replaced by %s (fee bump co-signed by the cold HSM)", user_tx_no, txid)
        return True


_SIGNED_NOTICE = re.compile(
    r"CC:SEND_SIGNED:([0-9]{1,10}):([0-9a-f]{64}):(.{1,128}):([A-Za-z0-9+/=]{88})"
)
REPLACEMENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS replacements (
    user_tx_no TEXT NOT NULL, txid TEXT NOT NULL, replaced_txid TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (user_tx_no, txid)
)
"""
