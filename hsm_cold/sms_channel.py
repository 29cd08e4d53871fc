"""The cold HSM's side of the SMS channel (docs/sms-channel.md, section 4): what it checks, what
it changes, what it answers. No modem here: `handle(sender, text, sim)` is given one received
text and queues its answer through `send`; `sms_service.py` owns the modems and the threads.

Trust comes from the keys pinned at provisioning, never from the sender number: the number
only selects the candidate accounts (those whose V-device has it); a `QH` must be signed by
the pinned V-device identity key, everything after it by that channel's V key. Refusals
change nothing, answer nothing (no oracle), are counted and, when they are not mere
duplicates, recorded as alerts (sent by SMS to the account's owner). Only a text that does
not parse, from a V-device number, is answered `sms format is error`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cc_common.sms import channel_messages as cm
from cc_common.sms.channel_messages import (
    AddressesProof,
    AddressType,
    ChannelOk,
    Form,
    MessageKind,
    OpenReply,
    OpenRequest,
    VerifyAddresses,
)
from cc_common.sms.errors import SmsError, SmsFormatError, SmsSignatureError
from hsm_cold.errors import ColdHsmError
from hsm_cold.keystore import ColdKeystore, channel_key_label
from hsm_cold.service import SOURCE_SMS, AlertKind, ColdService, WalletKind
from hsm_cold.store import CHANNEL_LIVE, CHANNEL_PENDING, AccountRecord, ChannelRecord, ColdStore

log = logging.getLogger(__name__)

DEFAULT_CHANNEL_LIFETIME = 86_400  # daily renewal, as the reference
DEFAULT_CHANNEL_FRESHNESS = cm.DEFAULT_FRESHNESS_SECONDS
COIN = "BTC"
C_ID_BYTES = 8  # 16 hex digits from the token's RNG

# send(number, text, purpose, prefer_sim, not_after): queue one SMS
Send = Callable[[str, str, str, int, float | None], None]
Count = Callable[[str], None]


@dataclass(frozen=True)
class ChannelPolicy:
    """`[hsm_cold] channel_lifetime`, `channel_freshness`, `accept_plain_channel_open`."""

    lifetime: int = DEFAULT_CHANNEL_LIFETIME
    freshness: int = DEFAULT_CHANNEL_FRESHNESS
    accept_plain: bool = False  # the reference's plain forms: spoofable, never in production


class Refused(Exception):
    """A check failed: nothing changes and nothing is answered."""

    def __init__(
        self,
        reason: str,
        detail: str,
        accounts: Sequence[AccountRecord] = (),
        *,
        alert: bool = True,
        kind: AlertKind = AlertKind.SMS_REFUSED,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.accounts = tuple(accounts)
        self.alert = alert
        self.kind = kind


class ChannelProtocol:
    """The cold HSM's handling of channel messages, over its service, store and token."""

    def __init__(
        self,
        service: ColdService,
        policy: ChannelPolicy,
        send: Send,
        count: Count,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.policy = policy
        self.send = send
        self.count = count
        self.clock = clock

    @property
    def store(self) -> ColdStore:
        return self.service.store

    @property
    def keystore(self) -> ColdKeystore:
        return self.service.keystore

    # -- entry point -------------------------------------------------------------------------

    def handle(self, sender: str, text: str, sim: int = 0) -> str:
        """Act on one received SMS; returns what happened (a counter name), for logs and tests."""
        self.count("received")
        if self.service.policies.is_policy_text(text):  # policy changes and owners' cancels
            policy_outcome = self.service.policies.handle_sms(sender, text)
            self.count(policy_outcome)
            return policy_outcome
        candidates = self.store.accounts_by_vdevice_phone(sender)
        if not candidates:
            self.count("refused.unknown_sender")
            log.info("SMS from %s (not a V-device number) ignored: %d chars", sender, len(text))
            return "unknown_sender"
        candidates = self.service.policies.confirmed(candidates)
        if not candidates:
            self.count("refused.pending")
            log.info("SMS from %s: its account awaits confirmation at the console", sender)
            return "pending"
        try:
            msg = cm.parse(text)
        except SmsFormatError as exc:
            return self._format_error(sender, candidates, exc.reason, sim)
        log.debug("SMS from %s: %r", sender, text)
        handlers = {
            MessageKind.OPEN_REQUEST: self._open,
            MessageKind.CHANNEL_OK: self._confirm,
            MessageKind.VERIFY_ADDRESSES: self._verify,
        }
        handler = handlers.get(msg.kind)
        try:
            if handler is None:
                # a V-device's own `sms format is error` is not answered: no ping-pong
                raise Refused(
                    "unexpected",
                    f"a {msg.kind.value} message is not for the cold HSM",
                    candidates,
                    alert=msg.kind is not MessageKind.FORMAT_ERROR,
                )
            outcome: str = handler(msg, sender, candidates, sim)  # type: ignore[operator]  # each takes its own message type
        except Refused as r:
            self.count(f"refused.{r.reason}")
            log.warning("%s from %s refused (%s): %s", msg.kind.value, sender, r.reason, r.detail)
            if r.alert:
                for rec in r.accounts:
                    self.service.alert(
                        rec.account,
                        r.kind,
                        f"{msg.kind.value} refused: {r.detail}",
                        source=SOURCE_SMS,
                    )
            return r.reason
        self.count(outcome)
        return outcome

    def _format_error(
        self, sender: str, candidates: Sequence[AccountRecord], reason: str, sim: int
    ) -> str:
        self.count("refused.format")
        log.warning("SMS from %s does not parse (%s); answered %r", sender, reason, "format error")
        self.send(sender, cm.FORMAT_ERROR_TEXT, "format_error", sim, None)
        for rec in candidates:
            self.service.alert(
                rec.account,
                AlertKind.SMS_FORMAT_ERROR,
                f"a malformed SMS from the V-device number {sender} ({reason})",
                source=SOURCE_SMS,
            )
        return "format_error"

    # -- helpers ---------------------------------------------------------------------------------

    def _channel(
        self, c_id: str, candidates: Sequence[AccountRecord]
    ) -> tuple[AccountRecord, ChannelRecord]:
        for rec in candidates:
            ch = self.store.get_channel(rec.account, c_id)
            if ch is not None:
                return rec, ch
        raise Refused("unknown_channel", f"no channel {c_id} for this V-device", candidates)

    def _only(
        self,
        candidates: Sequence[AccountRecord],
        what: str,
        kind: AlertKind = AlertKind.SMS_REFUSED,
    ) -> AccountRecord:
        """The account of a plain (unsigned) message: only when the number names just one."""
        if not self.policy.accept_plain:
            raise Refused(
                "plain_form", f"{what} in the plain form (unsigned)", candidates, kind=kind
            )
        if len(candidates) != 1:
            raise Refused(
                "ambiguous",
                f"plain {what} from a number of several accounts",
                candidates,
                kind=kind,
            )
        return candidates[0]

    def _new_c_id(self) -> str:
        while True:
            c_id = self.keystore.random(C_ID_BYTES).hex()
            if not self.store.c_id_taken(c_id):
                return c_id

    def _check_signer(self, recover: Callable[[], bytes], key: bytes, rec: AccountRecord) -> None:
        try:
            ok = recover() == key
        except SmsSignatureError:
            ok = False
        if not ok:
            raise Refused("bad_channel_signature", "not signed by the channel's V key", [rec])

    # -- QH: open a channel ----------------------------------------------------------------------

    def _open(
        self, msg: OpenRequest, sender: str, candidates: Sequence[AccountRecord], sim: int
    ) -> str:
        now = self.clock()
        refused_kind = AlertKind.CHANNEL_REFUSED
        if msg.form is Form.PLAIN:
            rec = self._only(candidates, "QH", refused_kind)
        else:
            try:
                signer: bytes | None = msg.recover_signer()
            except SmsSignatureError:
                signer = None
            found = [r for r in candidates if r.vdevice_identity == signer]
            if not found:
                raise Refused(
                    "bad_identity_signature",
                    f"channel request {msg.h_id} is not signed by the pinned V-device identity key",
                    candidates,
                    kind=refused_kind,
                )
            rec = found[0]
            assert msg.time is not None
            if abs(now - msg.time) > self.policy.freshness:
                raise Refused(
                    "stale",
                    f"channel request {msg.h_id} is dated {int(now - msg.time)} s from now"
                    f" (window {self.policy.freshness} s)",
                    [rec],
                    kind=refused_kind,
                )
        if rec.frozen:
            raise Refused("account_frozen", "the account is frozen", [rec], kind=refused_kind)
        sig = msg.sig or ""
        prior = self.store.h_id_sig(rec.account, msg.h_id)
        if prior is not None:
            if prior == sig:  # the same text again: a carrier duplicate or a replay
                raise Refused("replayed", f"h_id {msg.h_id} was already used", [rec], alert=False)
            raise Refused(
                "h_id_reused", f"h_id {msg.h_id} was already used", [rec], kind=refused_kind
            )
        if self.store.channel_key_used(rec.account, msg.channel_pubkey):
            raise Refused(
                "channel_key_reused", "the V channel key was used before", [rec], kind=refused_kind
            )
        if not self.store.claim_h_id(rec.account, msg.h_id, msg.channel_pubkey, sig):
            raise Refused("replayed", f"h_id {msg.h_id} was already used", [rec], alert=False)

        c_id = self._new_c_id()
        label = channel_key_label(rec.account, c_id)
        cold_pub = self.keystore.new_channel_key(label)
        expiry = int(now) + self.policy.lifetime
        self.store.put_channel(
            ChannelRecord(
                rec.account,
                c_id,
                msg.channel_pubkey,
                expiry,
                CHANNEL_PENDING,
                label,
                cold_pub,
                msg.h_id,
                now,
            )
        )
        if msg.form is Form.PLAIN:
            reply = OpenReply(cold_pub, c_id, msg.h_id)
        else:
            reply = OpenReply.signed(
                cold_pub,
                c_id,
                msg.h_id,
                msg.channel_pubkey,
                expiry,
                self.keystore.sign_message_digest,
            )
        self.send(sender, cm.format(reply), "QC", sim, now + self.policy.freshness)
        log.info(
            "account %d: channel %s opened for h_id %s, pending CHANNEL_OK, expires %d",
            rec.account,
            c_id,
            msg.h_id,
            expiry,
        )
        return "opened"

    # -- CHANNEL_OK: the channel becomes live -----------------------------------------------------

    def _confirm(
        self, msg: ChannelOk, sender: str, candidates: Sequence[AccountRecord], sim: int
    ) -> str:
        rec, ch = self._channel(msg.c_id, candidates)
        if msg.form is Form.PLAIN:
            self._only([rec], "CHANNEL_OK")
        else:
            self._check_signer(msg.recover_signer, ch.channel_pubkey, rec)
        if self.clock() >= ch.expires_at:
            raise Refused("channel_expired", f"channel {ch.c_id} has expired", [rec])
        if ch.state == CHANNEL_LIVE:
            log.info("account %d: channel %s is already live (duplicate)", rec.account, ch.c_id)
            return "duplicate"
        self.store.set_channel_state(rec.account, ch.c_id, CHANNEL_LIVE)
        log.info("account %d: channel %s is live until %d", rec.account, ch.c_id, ch.expires_at)
        return "confirmed"

    # -- VERIFY_…_ADDRESSES: prove a batch with the cold channel key ------------------------------

    def _verify(
        self, msg: VerifyAddresses, sender: str, candidates: Sequence[AccountRecord], sim: int
    ) -> str:
        now = self.clock()
        if msg.form is Form.PLAIN:
            rec = self._only(candidates, "VERIFY")
            live = [
                c
                for c in self.store.list_channels(rec.account)
                if c.state == CHANNEL_LIVE and c.cold_key_label and now < c.expires_at
            ]
            if not live:
                raise Refused("no_live_channel", "the account has no live channel", [rec])
            ch = live[0]
        else:
            assert msg.c_id is not None
            rec, ch = self._channel(msg.c_id, candidates)
            self._check_signer(msg.recover_signer, ch.channel_pubkey, rec)
        if ch.state != CHANNEL_LIVE:
            raise Refused("channel_not_live", f"channel {ch.c_id} is not live yet", [rec])
        if now >= ch.expires_at:
            raise Refused("channel_expired", f"channel {ch.c_id} has expired", [rec])
        if not ch.cold_key_label:
            raise Refused("no_cold_key", f"channel {ch.c_id} was not opened by SMS", [rec])
        if rec.frozen:
            raise Refused("account_frozen", "the account is frozen", [rec])
        if msg.coin != COIN:
            raise Refused("unsupported_coin", f"coin {msg.coin} is not {COIN}", [rec])
        if msg.nonce is not None and not self.store.claim_nonce(
            rec.account, ch.c_id, msg.nonce, msg.sig or "", ch.expires_at
        ):
            raise Refused("replayed", f"nonce {msg.nonce} was already used", [rec], alert=False)
        kind = WalletKind.COLD if msg.address_type is AddressType.COLD else WalletKind.HOT
        try:
            addresses = self.service.derive_batch(rec, kind, msg.batch_no)
        except ColdHsmError as exc:
            raise Refused("bad_batch", exc.message, [rec]) from None
        try:
            proof = AddressesProof.signed(
                msg.address_type,
                msg.batch_no,
                addresses,
                ch.c_id,
                msg.coin,
                self.keystore.channel_signer(ch.cold_key_label),
                msg.nonce,
            )
        except SmsError as exc:  # the token's signature did not verify: withheld
            raise Refused("signing_failed", exc.message, [rec]) from None
        self.send(sender, cm.format(proof), "ADDRESSES", sim, now + self.policy.freshness)
        log.info(
            "account %d: %s batch %d proved on channel %s",
            rec.account,
            kind.value,
            msg.batch_no,
            ch.c_id,
        )
        return "proved"
