"""The owner's remote control by SMS, and the sorting of every incoming SMS.

From the owner's number (`[vdevice] owner_number` or the bundle's), each command that changes
something carrying the owner's one-time code (`owner_auth.py`; the number alone proves nothing):
- `CC:START_LOOP:<code>` -> the loop runs again (also after an "AES decrypt error" stop);
  answer `CC:LOOP:RUNNING`;
- `CC:STOP_LOOP:<code>` -> batches and sends pause (SMS, owner commands and channel upkeep go
  on); answer `CC:LOOP:STOPPED`;
- `CC:APPROVE:<id>:<code>` -> the held send `<id>` may be signed; answer `CC:APPROVED:<id>`;
- `CC:REJECT:<id>:<code>` -> the held send `<id>` is refused; answer `CC:REJECTED:<id>`;
- a missing, wrong or replayed code -> `CC:REFUSED:<why>`, nothing changes; after a few the
  number is ignored for a while and the owner alerted;
- `CC:PING` -> answer `CC:PONG`;
- `CC:TIME` -> answer `CC:V:<YYYY-MM-DDTHH:MM:SS>` (UTC);
- anything that does not parse -> `sms format is error`; a parsable text that is not an owner
  command is ignored.

From a cold HSM number: `QC` and `..._ADDRESSES` go to the channel and batch logic, the cold
HSM's signed words (`CC:POLICY_ACK:...`, `CC:SEND_SIGNED:...`) to `on_cold_word`; a text
that does not parse is answered `sms format is error` (the reference's rule) and the owner is
alerted once. From any other number: ignored (logged with the number, never the text).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cc_common.logs import TRACE
from cc_common.sms import channel_messages as cm
from cc_common.sms.errors import SmsFormatError
from cc_common.sms.modem import IncomingSms
from vdevice.approvals import SendPolicy
from vdevice.owner_auth import CodeVerdict, OwnerAuth
from vdevice.phone import Phone
from vdevice.state import LoopState, State

log = logging.getLogger(__name__)

PONG = "CC:PONG"
LOOP_RUNNING = "CC:LOOP:RUNNING"
LOOP_STOPPED = "CC:LOOP:STOPPED"
_LOOP = re.compile(r"CC:(START_LOOP|STOP_LOOP)(?::([^:]*))?")
_APPROVE = re.compile(r"CC:(APPROVE|REJECT):([0-9a-f]{6}):([^:]*)")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class OwnerControl:
    """Answers the owner's commands; the loop state lives in `State` (survives a restart)."""

    def __init__(self, state: State, phone: Phone, auth: OwnerAuth, approvals: SendPolicy) -> None:
        self.state = state
        self.phone = phone
        self.auth = auth
        self.approvals = approvals

    def handle(self, text: str) -> None:
        owner = self.phone.owner_number
        if self.auth.locked(owner):
            log.info("owner: number locked out after refused codes; ignored")
            return
        stripped = text.strip()
        loop, approve = _LOOP.fullmatch(stripped), _APPROVE.fullmatch(stripped)
        if loop is not None or approve is not None:
            self._authenticated(loop, approve)
            return
        try:
            msg = cm.parse(text)
        except SmsFormatError as exc:
            log.info("owner: malformed command (%s)", exc.reason)
            self.phone.send(owner, cm.FORMAT_ERROR_TEXT)
            return
        if not isinstance(msg, cm.OwnerCommand):
            log.info("owner: %s is not a command: ignored", msg.kind.value)
            return
        action = msg.action
        log.info("owner: %s", action.value)
        if action is cm.OwnerAction.PING:
            self.phone.send(owner, PONG)
        elif action is cm.OwnerAction.TIME:
            self.phone.send(owner, cm.format(cm.TimeReply(utc_now())))

    def _authenticated(self, loop: re.Match[str] | None, approve: re.Match[str] | None) -> None:
        """A command that changes something: only with a valid, fresh one-time code."""
        owner = self.phone.owner_number
        code = loop.group(2) if loop is not None else approve.group(3) if approve else None
        verdict = self.auth.check(owner, code)
        if verdict is CodeVerdict.LOCKED:
            return
        if verdict is not CodeVerdict.OK:
            self.phone.send(owner, f"CC:REFUSED:{verdict.value} code")
            return
        if approve is not None:
            approval_id, yes = approve.group(2), approve.group(1) == "APPROVE"
            if self.approvals.approve(approval_id, time.time(), yes=yes):
                log.info("owner: send %s %s", approval_id, "approved" if yes else "rejected")
                self.phone.send(owner, f"CC:{'APPROVED' if yes else 'REJECTED'}:{approval_id}")
            else:
                self.phone.send(owner, f"CC:REFUSED:no held send {approval_id}")
        elif loop is not None and loop.group(1) == cm.OwnerAction.START_LOOP.value:
            log.info("owner: START_LOOP")
            self.state.set_loop_state(LoopState.RUNNING, "")
            self.phone.send(owner, LOOP_RUNNING)
        else:
            log.info("owner: STOP_LOOP")
            self.state.set_loop_state(LoopState.STOPPED, "stopped by the owner")
            self.phone.send(owner, LOOP_STOPPED)


class Dispatcher:
    """Sends each incoming SMS to the part that handles its sender."""

    def __init__(
        self,
        phone: Phone,
        owner: OwnerControl,
        cold_numbers: tuple[str, ...],
        on_open_reply: Callable[[cm.OpenReply, str], object],
        on_proof: Callable[[cm.AddressesProof, str], object],
        on_cold_word: Callable[[str], bool] = lambda text: False,
    ) -> None:
        self.phone = phone
        self.owner = owner
        self.cold_numbers = cold_numbers
        self.on_open_reply = on_open_reply
        self.on_proof = on_proof
        self.on_cold_word = on_cold_word

    def dispatch(self, sms: IncomingSms) -> None:
        log.log(TRACE, "sms from %s: %r", sms.sender, sms.text)
        if sms.sender == self.phone.owner_number:
            self.owner.handle(sms.text)
        elif sms.sender in self.cold_numbers:
            self._from_cold(sms)
        else:
            log.info("sms from unknown number %s: ignored", sms.sender)

    def _from_cold(self, sms: IncomingSms) -> None:
        if self.on_cold_word(sms.text):
            return
        try:
            msg = cm.parse(sms.text)
        except SmsFormatError as exc:
            log.warning("sms from cold number %s does not parse (%s)", sms.sender, exc.reason)
            self.phone.send(sms.sender, cm.FORMAT_ERROR_TEXT)
            self.phone.alert_once("cold-malformed", "sms from the cold HSM number did not parse")
            return
        if isinstance(msg, cm.OpenReply):
            self.on_open_reply(msg, sms.sender)
        elif isinstance(msg, cm.AddressesProof):
            self.on_proof(msg, sms.sender)
        elif isinstance(msg, cm.FormatErrorReply):
            log.warning("the cold HSM (%s) could not parse one of our texts", sms.sender)
        else:
            log.info("sms %s from cold number %s: ignored", msg.kind.value, sms.sender)
