"""Address batch verification (reference section 5 step 1, docs/sms-channel.md section 4).

For the oldest batch the merchant site holds unverified: check its shape (exactly 1000
entries, indices `batch_no*1000 .. +999` in order), ask the cold HSM for a proof by a signed
`VERIFY_..._ADDRESSES` with a fresh nonce, and compare the key recovered from the proof's
signature over *the site's* addresses with the channel's cold key. The verdict (2 verified,
3 failed) goes to the site and to custody (which hands out only verified addresses); a failed
batch alerts the owner.

Each retry is a fresh nonce (the cold HSM refuses a replayed one), alternating the cold
numbers; a reply to any nonce of the check is accepted, a reply to a nonce no longer
outstanding is ignored. No proof after every attempt is *not* a verdict (SMS loss proves
nothing): the owner is alerted and the check is tried again later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import time
from typing import Any

from cc_common.reference import BatchVerdict
from cc_common.sms import channel_messages as cm
from cc_common.sms.errors import SmsSignatureError
from vdevice.channel import ChannelKeeper
from vdevice.errors import RemoteRefused
from vdevice.phone import Phone
from vdevice.remote import CustodyClient, SiteClient
from vdevice.settings import Settings
from vdevice.state import CheckState, Provisioning, State
from wallet_core.chaincloud import BATCH_SIZE
from wallet_core.errors import WalletError

log = logging.getLogger(__name__)

COIN = "BTC"


def check_shape(body: dict[str, Any]) -> tuple[int, cm.AddressType, list[str]]:
    """(batch_no, type, addresses in index order) of a site batch; ValueError if malformed."""
    batch_no = body.get("batch_no")
    kind = body.get("address_type")
    entries = body.get("address_list")
    if isinstance(batch_no, bool) or not isinstance(batch_no, int) or batch_no < 0:
        raise ValueError("batch_no is not a non-negative integer")
    if kind not in (1, 2) or isinstance(kind, bool):
        raise ValueError("address_type is not 1 or 2")
    if not isinstance(entries, list) or len(entries) != BATCH_SIZE:
        raise ValueError(f"address_list does not hold exactly {BATCH_SIZE} entries")
    by_index: dict[int, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("an address_list entry is not an object")
        index, address = entry.get("index"), entry.get("address")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(address, str):
            raise ValueError("an address_list entry is malformed")
        if index in by_index:
            raise ValueError(f"index {index} appears twice")
        by_index[index] = address
    first = batch_no * BATCH_SIZE
    if sorted(by_index) != list(range(first, first + BATCH_SIZE)):
        raise ValueError(f"indices are not {first}..{first + BATCH_SIZE - 1}")
    return batch_no, cm.AddressType(kind), [by_index[i] for i in sorted(by_index)]


def content_sha(address_type: int, batch_no: int, addresses: list[str]) -> str:
    text = json.dumps([address_type, batch_no, addresses], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class BatchVerifier:
    """One batch at a time: ask, await, judge, report."""

    def __init__(
        self,
        state: State,
        phone: Phone,
        channels: ChannelKeeper,
        site: SiteClient,
        custody: CustodyClient,
        prov: Provisioning,
        settings: Settings,
    ) -> None:
        self.state = state
        self.phone = phone
        self.channels = channels
        self.site = site
        self.custody = custody
        self.prov = prov
        self.settings = settings

    # ----- the loop step -------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        db = self.state.db
        unreported = db.execute(
            "SELECT * FROM batch_checks WHERE state IN (?, ?) "
            "AND (site_reported = 0 OR custody_reported = 0) ORDER BY id LIMIT 1",
            (CheckState.VERIFIED, CheckState.FAILED),
        ).fetchone()
        if unreported is not None:
            self._report(unreported)
            return
        active = db.execute(
            "SELECT * FROM batch_checks WHERE state IN (?, ?) ORDER BY id LIMIT 1",
            (CheckState.PENDING, CheckState.STALLED),
        ).fetchone()
        if active is not None:
            self._advance(active, now)
            return
        body = self.site.pending_batch()
        if not body:
            return
        self._start(body, now)

    def _start(self, body: dict[str, Any], now: float) -> None:
        try:
            batch_no, kind, addresses = check_shape(body)
        except ValueError as exc:
            self._malformed(body, str(exc), now)
            return
        sha = content_sha(kind, batch_no, addresses)
        done = self.state.db.execute(
            "SELECT * FROM batch_checks WHERE content_sha = ? AND state IN (?, ?) "
            "ORDER BY id DESC LIMIT 1",
            (sha, CheckState.VERIFIED, CheckState.FAILED),
        ).fetchone()
        if done is not None:
            # The site shows a batch we already judged (its report was lost): say it again.
            log.info("batch %s %d: already %s; reporting again", kind.name, batch_no, done["state"])
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE batch_checks SET site_reported = 0 WHERE id = ?", (done["id"],)
                )
            return
        if self.channels.usable(now) is None:
            return  # the channel keeper is opening one
        with self.state.tx():
            cur = self.state.db.execute(
                "INSERT INTO batch_checks(address_type, batch_no, content_sha, addresses, state, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (int(kind), batch_no, sha, json.dumps(addresses), CheckState.PENDING, now),
            )
            check_id = cur.lastrowid
        log.info("batch %s %d: asking the cold HSM for a proof", kind.name, batch_no)
        row = self.state.db.execute(
            "SELECT * FROM batch_checks WHERE id = ?", (check_id,)
        ).fetchone()
        self._ask(row, now)

    def _malformed(self, body: dict[str, Any], reason: str, now: float) -> None:
        batch_no = body.get("batch_no")
        kind = body.get("address_type")
        if isinstance(batch_no, int) and kind in (1, 2) and batch_no >= 0:
            raw = json.dumps(body, sort_keys=True, default=str)
            sha = "malformed:" + hashlib.sha256(raw.encode()).hexdigest()
            seen = self.state.db.execute(
                "SELECT id FROM batch_checks WHERE content_sha = ?", (sha,)
            ).fetchone()
            if seen is not None:
                with self.state.tx():
                    self.state.db.execute(
                        "UPDATE batch_checks SET site_reported = 0 WHERE id = ?", (seen["id"],)
                    )
                return
            log.warning("batch %s %d: malformed list: %s", kind, batch_no, reason)
            with self.state.tx():
                self.state.db.execute(
                    "INSERT INTO batch_checks(address_type, batch_no, content_sha, addresses, "
                    "state, reason, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (kind, batch_no, sha, "[]", CheckState.FAILED, reason, now, now),
                )
            self.phone.alert(f"address batch {batch_no} failed verification ({reason})"[:160])
        else:
            self.phone.alert_once("batch-unreadable", "address batch from the site is unreadable")
            raise ValueError(f"the site's batch cannot be read: {reason}")

    def _advance(self, row: sqlite3.Row, now: float) -> None:
        if row["state"] == CheckState.STALLED:
            if now < row["retry_at"]:
                return
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE batch_checks SET state = ?, attempts = 0 WHERE id = ?",
                    (CheckState.PENDING, row["id"]),
                )
            self._ask(row, now, attempt=0)
            return
        if now - row["sent_at"] < self.settings.sms_reply_timeout:
            return
        if row["attempts"] >= self.settings.sms_max_attempts:
            log.warning("batch %d: no proof after %d requests", row["batch_no"], row["attempts"])
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE batch_checks SET state = ?, retry_at = ? WHERE id = ?",
                    (CheckState.STALLED, now + self.settings.stall_retry, row["id"]),
                )
            self.phone.alert_once(
                f"batch-stalled-{row['id']}",
                f"address batch {row['batch_no']}: no proof from the cold HSM; retrying later",
            )
            return
        self._ask(row, now)

    def _ask(self, row: sqlite3.Row, now: float, attempt: int | None = None) -> None:
        channel = self.channels.usable(now)
        if channel is None:
            return
        attempt = row["attempts"] if attempt is None else attempt
        numbers = self.prov.cold_numbers
        number = numbers[attempt % len(numbers)]
        if attempt > 0 and not channel.confirmed:
            self.channels.resend_channel_ok(channel)
        nonce = secrets.token_hex(8)
        kind = cm.AddressType(row["address_type"])
        msg = cm.VerifyAddresses.signed(
            kind, row["batch_no"], COIN, channel.c_id, nonce, channel.v_priv
        )
        with self.state.tx():
            self.state.db.execute(
                "INSERT INTO nonces(nonce, check_id, c_id, number, created_at, outstanding) "
                "VALUES (?, ?, ?, ?, ?, 1)",
                (nonce, row["id"], channel.c_id, number, now),
            )
            self.state.db.execute(
                "UPDATE batch_checks SET attempts = ?, sent_at = ? WHERE id = ?",
                (attempt + 1, now, row["id"]),
            )
        log.info("batch %d: verify request %d to %s", row["batch_no"], attempt + 1, number)
        self.phone.send(number, cm.format(msg))

    # ----- the proof -----------------------------------------------------------------------

    def on_proof(self, msg: cm.AddressesProof, sender: str, now: float | None = None) -> bool:
        """Judge a `..._ADDRESSES` reply (section 4, "V-device, on ..._ADDRESSES")."""
        now = time.time() if now is None else now
        if msg.nonce is None:
            log.warning("batch: proof without a nonce from %s: ignored", sender)
            return False
        db = self.state.db
        nonce = db.execute(
            "SELECT * FROM nonces WHERE nonce = ? AND outstanding = 1", (msg.nonce,)
        ).fetchone()
        if nonce is None:
            log.warning("batch: proof for nonce %s which is not outstanding: ignored", msg.nonce)
            return False
        row = db.execute("SELECT * FROM batch_checks WHERE id = ?", (nonce["check_id"],)).fetchone()
        if (
            row is None
            or row["state"] not in (CheckState.PENDING, CheckState.STALLED)
            or msg.batch_no != row["batch_no"]
            or int(msg.address_type) != row["address_type"]
            or msg.coin != COIN
            or msg.c_id != nonce["c_id"]
        ):
            log.warning("batch: proof does not match its request: ignored")
            return False
        channel = self.state.channel(nonce["c_id"])
        if channel is None:
            return False
        addresses = json.loads(row["addresses"])
        try:
            signer = msg.recover_signer(addresses, self.state.provisioning().account_id)
        except (SmsSignatureError, WalletError):
            signer = b""
        verified = signer == channel.cold_pub
        state = CheckState.VERIFIED if verified else CheckState.FAILED
        reason = "" if verified else "the proof is not over the site's addresses"
        with self.state.tx():
            db.execute(
                "UPDATE batch_checks SET state = ?, reason = ?, finished_at = ? WHERE id = ?",
                (state, reason, now, row["id"]),
            )
            db.execute("UPDATE nonces SET outstanding = 0 WHERE check_id = ?", (row["id"],))
            db.execute("UPDATE channels SET confirmed = 1 WHERE c_id = ?", (channel.c_id,))
        kind = cm.AddressType(row["address_type"])
        if verified:
            log.info("batch %s %d: verified", kind.name, row["batch_no"])
        else:
            log.warning("batch %s %d: FAILED verification", kind.name, row["batch_no"])
            self.phone.alert(f"address batch {row['batch_no']} failed verification")
        self.phone.clear(f"batch-stalled-{row['id']}")
        fresh = db.execute("SELECT * FROM batch_checks WHERE id = ?", (row["id"],)).fetchone()
        self._report(fresh)
        return True

    def _report(self, row: sqlite3.Row) -> None:
        verified = row["state"] == CheckState.VERIFIED
        status = BatchVerdict.VERIFIED if verified else BatchVerdict.FAILED
        if not row["site_reported"]:
            try:
                self.site.report_batch(row["batch_no"], status, row["address_type"])
            except RemoteRefused as exc:
                log.warning("batch %d: the site refused the verdict: %s", row["batch_no"], exc)
                self.phone.alert_once(
                    f"batch-site-refused-{row['id']}",
                    f"address batch {row['batch_no']}: the site refused the verdict",
                )
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE batch_checks SET site_reported = 1 WHERE id = ?", (row["id"],)
                )
        if not row["custody_reported"]:
            try:
                self.custody.report_batch(row["batch_no"], status, row["address_type"])
            except RemoteRefused as exc:
                # A definite refusal will not change on retry: say so once, and move on.
                log.warning("batch %d: custody refused the verdict: %s", row["batch_no"], exc)
                self.phone.alert(f"address batch {row['batch_no']}: custody refused the verdict")
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE batch_checks SET custody_reported = 1 WHERE id = ?", (row["id"],)
                )
        log.info("batch %d: reported %s", row["batch_no"], row["state"])
