"""The owner's one-time codes (TOTP, RFC 6238 via pyotp) that authenticate owner commands.

The secret is made at provisioning and shown once (otpauth URI and a terminal QR code) for the
owner's authenticator app; the sender's number alone proves nothing (it can be spoofed). A code
is accepted once: its time step must be later than the last accepted one, so a replayed code
(seen on a lock screen, or resent) is refused. Wrong, missing or replayed codes are counted per
number; after `MAX_FAILURES` in a row the number is ignored for `LOCKOUT` seconds and the
owner is alerted (a real owner still gets in after the lock-out; an attacker gets a few
guesses per quarter hour out of a million codes).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import pyotp
import qrcode

from vdevice.state import State

log = logging.getLogger(__name__)

ISSUER = "ChainCloud V-device"
MAX_FAILURES = 3
LOCKOUT = 900.0
VALID_WINDOW = 1  # one step (30 s by default) either side: clock drift and SMS delay
DEFAULT_PERIOD = 30  # seconds per code, as every authenticator app shows them
_TOTP_META = "owner_totp_secret"
_PERIOD_META = "owner_totp_period"
_LAST_STEP = "owner_totp_last_step"


class CodeVerdict(StrEnum):
    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"
    REPLAYED = "replayed"
    LOCKED = "locked"  # the number is ignored for a while after failures


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str
    qr: str


def enrol(state: State, account: int, period: int = DEFAULT_PERIOD) -> Enrolment:
    """A new secret for the owner's authenticator (replaces any old one).

    `period` other than 30 s goes into the otpauth URI (`period=`); each code is good once, so
    a shorter period lets an owner give several commands in a row without waiting.
    """
    secret = pyotp.random_base32()
    with state.tx():
        state.set_meta(_TOTP_META, secret)
        state.set_meta(_PERIOD_META, str(period))
        state.set_meta(_LAST_STEP, "0")
    uri = pyotp.TOTP(secret, interval=period).provisioning_uri(
        name=f"account {account}", issuer_name=ISSUER
    )
    return Enrolment(secret, uri, terminal_qr(uri))


def terminal_qr(text: str) -> str:
    """The QR code of `text` as text, for a terminal (the `qrcode` package's ASCII output)."""
    code = qrcode.QRCode(border=1)
    code.add_data(text)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def has_secret(state: State) -> bool:
    return state.get_meta(_TOTP_META) is not None


class OwnerAuth:
    """Checks owner codes; counts failures and locks a number out for a while."""

    def __init__(
        self,
        state: State,
        on_lockout: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.on_lockout = on_lockout
        self.clock = clock

    def locked(self, number: str) -> bool:
        until = float(self.state.get_meta(f"owner_locked_until:{number}") or 0)
        return self.clock() < until

    def check(self, number: str, code: str | None) -> CodeVerdict:
        if self.locked(number):
            return CodeVerdict.LOCKED
        verdict = self._verify(code)
        if verdict is CodeVerdict.OK:
            with self.state.tx():
                self.state.set_meta(f"owner_failures:{number}", "0")
            return verdict
        failures = int(self.state.get_meta(f"owner_failures:{number}") or 0) + 1
        with self.state.tx():
            self.state.set_meta(f"owner_failures:{number}", str(failures))
            if failures >= MAX_FAILURES:
                self.state.set_meta(f"owner_locked_until:{number}", str(self.clock() + LOCKOUT))
                self.state.set_meta(f"owner_failures:{number}", "0")
        log.warning("owner code from %s refused (%s), failure %d", number, verdict.value, failures)
        if failures >= MAX_FAILURES:
            self.on_lockout(number)
        return verdict

    def _verify(self, code: str | None) -> CodeVerdict:
        secret = self.state.get_meta(_TOTP_META)
        if not code:
            return CodeVerdict.MISSING
        if secret is None or not (code.isdigit() and len(code) == 6):
            return CodeVerdict.WRONG
        totp = pyotp.TOTP(secret, interval=int(self.state.get_meta(_PERIOD_META) or DEFAULT_PERIOD))
        now = self.clock()
        step = int(now // totp.interval)
        for delta in range(-VALID_WINDOW, VALID_WINDOW + 1):
            at = now + delta * totp.interval
            if pyotp.utils.strings_equal(totp.at(at), code):
                matched = step + delta
                with self.state.tx():
                    last = int(self.state.get_meta(_LAST_STEP) or 0)
                    if matched <= last:
                        return CodeVerdict.REPLAYED
                    self.state.set_meta(_LAST_STEP, str(matched))
                return CodeVerdict.OK
        return CodeVerdict.WRONG


def current_code(secret: str, at: float | None = None, period: int = DEFAULT_PERIOD) -> str:
    """What the owner's authenticator shows (the demo and the tests play the owner)."""
    totp = pyotp.TOTP(secret, interval=period)
    return totp.at(time.time() if at is None else at)
