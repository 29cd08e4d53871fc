"""The phone's own SMS: sending through its modem, and alerting its owner.

Every alert is recorded in the state (the status shows the recent ones) whether or not the SMS
could be sent; a modem failure never stops the loop. Texts are logged at DEBUG or below only.
"""

from __future__ import annotations

import logging
import time

from cc_common.logs import TRACE
from cc_common.sms.errors import SmsError
from cc_common.sms.modem import GsmModem, IncomingSms
from cc_common.text import printable
from vdevice.state import State

log = logging.getLogger(__name__)

MAX_ALERT = 160  # one SMS segment


class Phone:
    """The modem plus the owner's number; `alert_once` keys stop a repeated alert."""

    def __init__(self, modem: GsmModem, state: State, owner_number: str) -> None:
        self.modem = modem
        self.state = state
        self.owner_number = owner_number
        self._raised: set[str] = set()

    def send(self, number: str, text: str) -> bool:
        """Send one SMS; False (logged) if the modem could not."""
        log.log(TRACE, "sms to %s: %r", number, text)
        try:
            self.modem.send(number, text)
        except SmsError as exc:
            log.warning("sms to %s not sent: %s", number, exc.message)
            return False
        return True

    def receive(self, timeout: float) -> list[IncomingSms]:
        """Messages, waiting at most `timeout` for one; [] (logged) if the modem fails."""
        try:
            return self.modem.wait_for_messages(timeout)
        except SmsError as exc:
            log.warning("modem: %s", exc.message)
            return []

    def alert(self, text: str) -> None:
        """SMS `text` to the owner and record it."""
        text = printable(text)[:MAX_ALERT]
        delivered = self.send(self.owner_number, text)
        # The text is an SMS body: DEBUG only; `vdevice status` shows the recent alerts.
        log.warning(
            "alert to the owner %s (see `vdevice status`)", "sent" if delivered else "NOT sent"
        )
        log.debug("alert text: %s", text)
        self.state.add_alert(text, delivered, time.time())

    def alert_once(self, key: str, text: str) -> None:
        """Alert, unless the same `key` was raised and not cleared since."""
        if key in self._raised:
            return
        self._raised.add(key)
        self.alert(text)

    def clear(self, key: str) -> None:
        self._raised.discard(key)

    def raised(self, key: str) -> bool:
        return key in self._raised
