"""Errors of the PKCS#11 token layer, one class per failure, with stable numeric codes.

`pkcs11` exceptions never leave this package: `session.translate_errors` maps them here. No
message ever carries a PIN or key material; PKCS#11 failures are named by their class only.
"""

from __future__ import annotations

from cc_common.errors import CustodyError


class TokenError(CustodyError):
    """Root of every token-layer failure (the HSM's PKCS#11 token or its PIN guard)."""

    code = 400


class TokenNotFound(TokenError):
    """No initialised token with the configured label is visible through this module."""

    code = 401


class PinIncorrect(TokenError):
    """The PIN was refused by the token (the message never contains the PIN)."""

    code = 402


class TokenLocked(TokenError):
    """Our retry limit was reached: even the right PIN is refused until an SO reset."""

    code = 403


class KeyNotFound(TokenError):
    """No key with this label on this token."""

    code = 404


class KeyExists(TokenError):
    """A key with this label is already on the token; keys are never replaced."""

    code = 405


class SignatureCheckFailed(TokenError):
    """The token's signature did not verify against its own public key; nothing is returned."""

    code = 406


class DecryptionFailed(TokenError):
    """A sealed blob failed authentication (tampered, wrong AAD, wrong key) or is malformed."""

    code = 407


class KeyProtected(TokenError):
    """A protected attribute was read or changed (sensitive, non-extractable, read-only)."""

    code = 408


class InvalidArgument(TokenError):
    """A caller passed a malformed value (digest length, label) before reaching the token."""

    code = 409


class MechanismUnsupported(TokenError):
    """The PKCS#11 module lacks a mechanism this layer needs."""

    code = 410


class SessionLost(TokenError):
    """The logged-in session is gone (closed, logged out, device removed)."""

    code = 411


class ModuleConflict(TokenError):
    """The PKCS#11 module is already loaded in this process with another configuration."""

    code = 412


class TokenInitFailed(TokenError):
    """`softhsm2-util` could not initialise the token."""

    code = 413


class TokenBusy(TokenError):
    """The token is already open in this process (login is per token, not per session)."""

    code = 414
