"""Opening and renewing the SMS channel with the cold HSM (docs/sms-channel.md section 4).

A *round* of opening is up to `sms_max_attempts` `QH`s, each with a fresh channel key and a
fresh `h_id` (the cold HSM refuses a reused one, so a retry after a lost `QC` must be new),
alternating between the cold HSM's numbers so a dead SIM is skipped. Any `QC` answering any
`h_id` of the round is accepted if it passes the checks; the round then closes, so a replayed
or late `QC` matches nothing. A round that gets no answer alerts the owner once and is tried
again after `stall_retry` seconds.

Nothing here blocks: `tick()` sends what is due and `on_open_reply()` handles a `QC`.
"""

from __future__ import annotations

import logging
import secrets
import time

from cc_common.sms import channel_messages as cm
from cc_common.sms.errors import SmsSignatureError
from vdevice.phone import Phone
from vdevice.settings import Settings
from vdevice.state import Channel, Provisioning, State, new_key

log = logging.getLogger(__name__)

ALERT_NO_ANSWER = "channel-no-answer"


class ChannelKeeper:
    """Keeps one live channel: opens it, renews it ahead of expiry, checks every `QC`."""

    def __init__(self, state: State, phone: Phone, prov: Provisioning, settings: Settings):
        self.state = state
        self.phone = phone
        self.prov = prov
        self.settings = settings

    # ----- what other steps use ------------------------------------------------------------

    def usable(self, now: float | None = None) -> Channel | None:
        """The channel to sign under now, or None while there is none."""
        now = time.time() if now is None else now
        return self.state.current_channel(now)

    def resend_channel_ok(self, channel: Channel) -> None:
        """`CHANNEL_OK` again (idempotent at the cold HSM): in case the first one was lost."""
        ok = cm.ChannelOk.signed(channel.c_id, channel.v_priv)
        self.phone.send(channel.cold_number, cm.format(ok))

    # ----- the round -----------------------------------------------------------------------

    def _round_no(self) -> int:
        return int(self.state.get_meta("open_round") or 0)

    def tick(self, now: float | None = None) -> None:
        """Send the next `QH` if one is due; give up a round that got no answer."""
        now = time.time() if now is None else now
        outstanding = self.state.outstanding_opens()
        if outstanding:
            last = outstanding[-1]
            if now - last["sent_at"] < self.settings.sms_reply_timeout:
                return
            if len(outstanding) >= self.settings.sms_max_attempts:
                log.warning("channel: no answer to %d open requests", len(outstanding))
                self.state.abandon_opens()
                with self.state.tx():
                    self.state.set_meta("next_open_at", str(now + self.settings.stall_retry))
                self.phone.alert_once(
                    ALERT_NO_ANSWER, "channel: the cold HSM does not answer; retrying later"
                )
                return
            self._send_open(len(outstanding), now)
            return
        if now < float(self.state.get_meta("next_open_at") or 0):
            return
        current = self.state.current_channel(now)
        if current is not None and now < current.renew_at(self.settings.channel_renew_before):
            return
        with self.state.tx():
            self.state.set_meta("open_round", str(self._round_no() + 1))
        if current is None:
            log.info("channel: opening a channel")
        else:
            log.info("channel: renewing channel %s", current.c_id)
        self._send_open(0, now)

    def _send_open(self, attempt: int, now: float) -> None:
        numbers = self.prov.cold_numbers
        number = numbers[attempt % len(numbers)]
        priv, pub = new_key()
        h_id = secrets.token_hex(8)
        while self.state.h_id_used(h_id):
            h_id = secrets.token_hex(8)
        msg = cm.OpenRequest.signed(pub, h_id, int(now), self.state.identity_priv())
        # Recorded before it leaves: a QC to an h_id we never stored would be ignored.
        self.state.add_open(h_id, self._round_no(), priv, pub, number, now)
        log.info("channel: open request %s (attempt %d) to %s", h_id, attempt + 1, number)
        self.phone.send(number, cm.format(msg))

    # ----- the answer ----------------------------------------------------------------------

    def on_open_reply(self, msg: cm.OpenReply, sender: str, now: float | None = None) -> bool:
        """Check a `QC` (section 4, "V-device, on QC"); install the channel if it passes."""
        now = time.time() if now is None else now
        pending = {row["h_id"]: row for row in self.state.outstanding_opens()}
        row = pending.get(msg.h_id)
        if row is None:
            log.warning("channel: QC for h_id %s which is not outstanding: ignored", msg.h_id)
            return False
        if msg.form is not cm.Form.EXTENDED or msg.expiry is None:
            log.warning("channel: unsigned QC from %s: ignored", sender)
            return False
        v_pub = bytes.fromhex(row["v_pub"])
        try:
            signer = msg.recover_signer(v_pub)
        except SmsSignatureError:
            signer = b""
        if signer != self.prov.cold_identity:
            log.warning(
                "channel: QC for %s not signed by the cold identity key for our key: ignored",
                msg.h_id,
            )
            self.phone.alert_once(
                "channel-bad-qc", "channel: refused an open reply not signed by the cold HSM"
            )
            return False
        if not now < msg.expiry <= now + self.settings.channel_max_lifetime:
            log.warning("channel: QC expiry %d out of range: ignored", msg.expiry)
            return False
        if self.state.c_id_seen(msg.c_id):
            log.warning("channel: QC reuses c_id %s: ignored", msg.c_id)
            return False
        channel = self.state.install_channel(
            row, msg.c_id, msg.channel_pubkey, sender, msg.expiry, now
        )
        log.info(
            "channel: %s open until %d (%ds)", channel.c_id, channel.expiry, channel.expiry - now
        )
        self.phone.clear(ALERT_NO_ANSWER)
        self.phone.clear("channel-bad-qc")
        ok = cm.ChannelOk.signed(channel.c_id, channel.v_priv)
        self.phone.send(sender, cm.format(ok))
        return True
