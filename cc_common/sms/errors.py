"""Errors of the SMS stack (codes 800-849, see `cc_errors.registry`).

Modem failures are translated from pyserial and from `+CMS ERROR` result codes at one place
(`modem.GsmModem`); channel texts that do not parse raise `SmsFormatError`, whose callers
answer `sms format is error`.
"""

from __future__ import annotations

from cc_common.errors import CustodyError


class SmsError(CustodyError):
    """Base of every SMS error."""

    code = 800


class ModemError(SmsError):
    """The modem answered `ERROR` or something we cannot make sense of."""

    code = 801


class ModemUnavailable(ModemError):
    """The serial port cannot be opened or broke; it is reopened later with backoff."""

    code = 802


class ModemTimeout(ModemError):
    """The modem did not finish a command in time."""

    code = 803


class ModemCommandError(ModemError):
    """A command other than a send failed with `+CMS ERROR: <cms>` (e.g. 321 bad index)."""

    code = 804

    def __init__(self, cms: int, message: str | None = None) -> None:
        super().__init__(message or f"modem answered +CMS ERROR: {cms}")
        self.cms = cms


class SmsSendError(SmsError):
    """`AT+CMGS` failed with `+CMS ERROR: <cms>`."""

    code = 810

    def __init__(self, cms: int, message: str | None = None) -> None:
        super().__init__(message or f"send failed: +CMS ERROR: {cms}")
        self.cms = cms


class InvalidNumber(SmsSendError):
    """The destination number is malformed (304); no SIM will do better."""

    code = 811

    def __init__(self, message: str = "invalid destination number") -> None:
        super().__init__(304, message)


class InvalidText(SmsSendError):
    """The text is not in the GSM 7-bit alphabet or too long (305); no SIM will do better."""

    code = 812

    def __init__(self, message: str = "text is not sendable in the GSM 7-bit alphabet") -> None:
        super().__init__(305, message)


class NoNetworkService(SmsSendError):
    """The SIM has no network service (331): try another SIM."""

    code = 813

    def __init__(self, message: str = "no network service") -> None:
        super().__init__(331, message)


class AllModemsFailed(SmsError):
    """A fail-over send was tried on every modem and none delivered it to the network."""

    code = 820

    def __init__(self, failures: list[tuple[str, SmsError]]) -> None:
        detail = "; ".join(f"{name}: {err.message}" for name, err in failures)
        super().__init__(f"no modem could send: {detail}")
        self.failures = failures


class SmsFormatError(SmsError):
    """A channel text does not parse; `reason` says why (never the text itself)."""

    code = 830

    def __init__(self, reason: str) -> None:
        super().__init__(f"sms format is error: {reason}")
        self.reason = reason


class SmsSignatureError(SmsError):
    """A channel signature is malformed or is not by the expected key."""

    code = 831
