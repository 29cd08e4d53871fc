"""One long-lived, logged-in PKCS#11 session per token, shared safely by threads.

SoftHSM is not safe under concurrent calls (threads get `GeneralError`), and login is per token
(closing any logged-in session logs them all out), so a process holds exactly one session per
token and every operation runs under its lock. This module is also the boundary where `pkcs11`
exceptions become ours (`translate_errors`), and where our PIN retry limit is enforced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pkcs11
from pkcs11 import exceptions as p11
from pkcs11._pkcs11 import lib as Pkcs11Lib  # `pkcs11.lib` is a loader function

from cc_common.token import errors
from cc_common.token.library import load_module
from cc_common.token.pin_guard import PinGuard
from cc_common.token.settings import TokenSettings
from cc_common.token.types import PinRole

log = logging.getLogger(__name__)

# pkcs11 failure -> our class; anything unlisted becomes a plain TokenError.
_TRANSLATION: Mapping[type[p11.PKCS11Error], type[errors.TokenError]] = {
    p11.NoSuchToken: errors.TokenNotFound,
    p11.TokenNotPresent: errors.TokenNotFound,
    p11.TokenNotRecognised: errors.TokenNotFound,
    p11.PinIncorrect: errors.PinIncorrect,
    p11.PinInvalid: errors.PinIncorrect,
    p11.PinLenRange: errors.PinIncorrect,
    p11.PinLocked: errors.TokenLocked,
    p11.NoSuchKey: errors.KeyNotFound,
    p11.AttributeSensitive: errors.KeyProtected,
    p11.AttributeReadOnly: errors.KeyProtected,
    p11.KeyUnextractable: errors.KeyProtected,
    p11.MechanismInvalid: errors.MechanismUnsupported,
    p11.FunctionNotSupported: errors.MechanismUnsupported,
    p11.UserNotLoggedIn: errors.SessionLost,
    p11.SessionClosed: errors.SessionLost,
    p11.SessionHandleInvalid: errors.SessionLost,
    p11.DeviceRemoved: errors.SessionLost,
    p11.UserAlreadyLoggedIn: errors.TokenBusy,
    p11.AnotherUserAlreadyLoggedIn: errors.TokenBusy,
    p11.SessionReadWriteSOExists: errors.TokenBusy,
}

_PIN_FAILURES = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange)


@contextmanager
def translate_errors(
    action: str,
    overrides: Mapping[type[p11.PKCS11Error], type[errors.TokenError]] | None = None,
) -> Iterator[None]:
    """Re-raise any `pkcs11` exception as ours, named by class only (never by its arguments).

    `overrides` lets an operation give a generic failure its meaning (SoftHSM answers a
    failed AES-GCM tag check with `GeneralError`).
    """
    try:
        yield
    except p11.PKCS11Error as exc:
        kind = type(exc)
        ours = (overrides or {}).get(kind) or _TRANSLATION.get(kind, errors.TokenError)
        message = f"{action}: {ours.__name__} (PKCS#11 {kind.__name__})"
        if isinstance(exc, _PIN_FAILURES):
            raise ours(message) from None  # nothing of the login call travels with it
        raise ours(message) from exc


def find_token(lib: Pkcs11Lib, label: str) -> pkcs11.Token:
    """The token labelled `label` (slot numbers are random, labels are ours)."""
    with translate_errors(f"find token {label!r}"):
        try:
            return lib.get_token(token_label=label)
        except p11.NoSuchToken:
            raise errors.TokenNotFound(
                f"no token labelled {label!r}; run the HSM's `init` first"
            ) from None
        except p11.MultipleTokensReturned:
            raise errors.TokenError(f"several tokens are labelled {label!r}") from None


_open_tokens: set[tuple[str, str]] = set()
_open_lock = threading.Lock()


class TokenSession:
    """The process's logged-in session on one token; every use goes through `operation()`."""

    def __init__(self, settings: TokenSettings, token: pkcs11.Token, session: pkcs11.Session):
        self.settings = settings
        self._token = token
        self._session: pkcs11.Session | None = session
        self._lock = threading.RLock()

    @classmethod
    def open(cls, settings: TokenSettings) -> TokenSession:
        """Load the module, find the token, log in with the user PIN under the retry limit."""
        key = (str(settings.module_path), settings.label)
        with _open_lock:
            if key in _open_tokens:
                raise errors.TokenBusy(
                    f"token {settings.label!r} is already open in this process; share it"
                )
            lib = load_module(settings.module_path, settings.softhsm_conf)
            token = find_token(lib, settings.label)
            guard = PinGuard(settings.pin_state_path, settings.pin_retry_limit)
            with guard.attempt(PinRole.USER), translate_errors(f"log in to {settings.label!r}"):
                session = token.open(rw=True, user_pin=settings.user_pin)
            _open_tokens.add(key)
        log.info("logged in to token %r", settings.label)
        return cls(settings, token, session)

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @contextmanager
    def operation(
        self,
        action: str,
        overrides: Mapping[type[p11.PKCS11Error], type[errors.TokenError]] | None = None,
    ) -> Iterator[pkcs11.Session]:
        """Hold the token's lock for one operation, with `pkcs11` errors translated."""
        with self._lock, translate_errors(action, overrides):
            if self._session is None:
                raise errors.SessionLost(f"{action}: the token session is closed")
            yield self._session

    def mechanisms(self) -> frozenset[pkcs11.Mechanism]:
        with self.operation("list mechanisms"):
            return frozenset(self._token.slot.get_mechanisms())

    def random_bytes(self, n: int) -> bytes:
        """`n` random bytes from the token's generator."""
        with self.operation("generate random") as s:
            return bytes(s.generate_random(n * 8))

    def close(self) -> None:
        """Log out and close; every key handle obtained through this session becomes invalid."""
        with self._lock:
            if self._session is None:
                return
            session, self._session = self._session, None
            with _open_lock:
                _open_tokens.discard((str(self.settings.module_path), self.settings.label))
            with translate_errors(f"close {self.label!r}"):
                session.close()
        log.info("closed token %r", self.label)

    def __enter__(self) -> TokenSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def closed_token(settings: TokenSettings, before: str) -> Iterator[tuple[pkcs11.Token, PinGuard]]:
    """The token of `settings` with its retry guard, for a login outside `HsmToken`; refused
    (`TokenBusy`, "close token ... before `before`") while this process has it open."""
    key = (str(settings.module_path), settings.label)
    with _open_lock:
        if key in _open_tokens:
            raise errors.TokenBusy(f"close token {settings.label!r} before {before}")
        lib = load_module(settings.module_path, settings.softhsm_conf)
        yield (
            find_token(lib, settings.label),
            PinGuard(settings.pin_state_path, settings.pin_retry_limit),
        )


def reset_pin_lock(settings: TokenSettings, so_pin: str) -> None:
    """Operator unlock: verify `so_pin` by an SO login on the token, then clear our counters.

    The token must not be open (logged in as user) in this process: login is per token. Wrong
    SO PINs are counted too, against the same limit.
    """
    with (
        closed_token(settings, "an SO reset") as (token, guard),
        guard.attempt(PinRole.SO),
        translate_errors(f"SO login to {settings.label!r}"),
    ):
        token.open(rw=True, so_pin=so_pin).close()
    guard.clear()
    log.warning("PIN retry lock of token %r cleared by the SO", settings.label)


def pin_guard(settings: TokenSettings) -> PinGuard:
    """The retry counter of `settings`'s token (for status displays and tests)."""
    return PinGuard(Path(settings.pin_state_path), settings.pin_retry_limit)
