"""One sender over several modems (SIMs on different carriers), falling over between them.

The cold HSM has two SIMs on two carriers: when one has no service, times out or its port is
broken, the next one sends, and it stays the first choice until it fails in turn. Errors
that no other SIM would fix (a malformed number, a text outside the GSM alphabet) are raised
at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cc_common.sms.errors import AllModemsFailed, InvalidNumber, InvalidText, SmsError
from cc_common.sms.modem import GsmModem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendReceipt:
    """Which modem sent a message, its reference there, and what failed before it."""

    modem: str
    position: int
    message_ref: int
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def failed_over(self) -> bool:
        return bool(self.failures)


class FailoverSender:
    """Sends through the modem that last worked, trying the others in order when it fails."""

    def __init__(self, modems: Sequence[GsmModem]) -> None:
        if not modems:
            raise ValueError("FailoverSender needs at least one modem")
        self.modems = list(modems)
        self._lock = threading.Lock()
        self._preferred = 0

    @property
    def preferred(self) -> GsmModem:
        """The modem the next send tries first."""
        with self._lock:
            return self.modems[self._preferred]

    def send(self, number: str, text: str) -> SendReceipt:
        """Send through the first modem that takes the message; raise `AllModemsFailed`."""
        with self._lock:
            first = self._preferred
        order = [first] + [i for i in range(len(self.modems)) if i != first]
        failures: list[tuple[str, SmsError]] = []
        for position in order:
            modem = self.modems[position]
            try:
                ref = modem.send(number, text)
            except (InvalidNumber, InvalidText):
                raise
            except SmsError as exc:
                log.warning("modem %s could not send: %s", modem.name, exc.message)
                failures.append((modem.name, exc))
                continue
            with self._lock:
                if self._preferred != position:
                    log.warning("SMS now goes out through modem %s", modem.name)
                    self._preferred = position
            return SendReceipt(
                modem.name, position, ref, tuple((name, e.message) for name, e in failures)
            )
        raise AllModemsFailed(failures)
