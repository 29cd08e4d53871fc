"""Errors of the custody API: one class per failure, each with a stable numeric code and an
HTTP status, turned into the one JSON shape `{"code": n, "message": "..."}` by the errors
blueprint (`custody.api.errors`).

Codes are part of the public interface: the reference fixes code 3 ("user_tx_no already
accepted"), which a V-device treats as success. The others are ours and never change meaning.
"""

from __future__ import annotations

from cc_common.errors import CustodyError


class ApiError(CustodyError):
    """Base of every error the API answers on purpose."""

    code = 2
    status = 400

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None):
        super().__init__(message, code=code)
        if status is not None:
            self.status = status


class InternalError(ApiError):
    """Anything unexpected: the client learns nothing but this (the log has the details)."""

    code = 1
    status = 500


class BadRequest(ApiError):
    """A field is missing or invalid."""

    code = 2
    status = 400


class DuplicateUserTxNo(ApiError):
    """The reference's code 3: this `user_tx_no` was already accepted (retries are safe)."""

    code = 3
    status = 400


class Unauthorized(ApiError):
    """No `token` header, or a token we do not know (or one that was revoked)."""

    code = 4
    status = 401


class Forbidden(ApiError):
    """The token is valid but its scope does not allow this call (e.g. a cold token sends)."""

    code = 5
    status = 403


class NotFound(ApiError):
    """No such endpoint, account, batch or send (or not visible to this token)."""

    code = 6
    status = 404


class Conflict(ApiError):
    """The request contradicts the current state (e.g. a name already taken)."""

    code = 7
    status = 409


class RateLimited(ApiError):
    """Too many requests for this token; `Retry-After` says when to try again."""

    code = 8
    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccountFrozen(ApiError):
    """The account is frozen (by the operator or by the cold HSM): nothing is sent."""

    code = 9
    status = 409


class BatchNotNext(ApiError):
    """A batch beyond the next one was asked for; the message says which is next."""

    code = 10
    status = 400


class BatchNotVerified(ApiError):
    """No receiving address can be handed out until the V-device verified a batch."""

    code = 11
    status = 409


class ProofInvalid(ApiError):
    """The HSM's proof does not verify against the pinned cold identity key: refused."""

    code = 12
    status = 502


class HsmUnavailableError(ApiError):
    """The hot HSM (or the cold HSM behind it) could not be reached; retry later."""

    code = 13
    status = 503


class HsmRefusedError(ApiError):
    """The HSM refused the request; the message carries its reason and code."""

    code = 14
    status = 502


class MethodNotAllowed(ApiError):
    """The endpoint exists but not with this HTTP method."""

    code = 15
    status = 405


class ForgedVcCode(ApiError):
    """`vc_code` is not the V-device's signature over this request under channel `c_id`:
    refused before anything reaches an HSM, nothing frozen (a stolen hot token alone)."""

    code = 40
    status = 400


class UnknownChannel(ApiError):
    """`c_id` is not a live channel of the account on the cold HSM."""

    code = 41
    status = 400


class AccountError(ApiError):
    """Operator-side account management refused (bad name, phone, descriptor, key...)."""

    code = 16
    status = 400


class DatabaseUnavailable(ApiError):
    """The database cannot be reached (the message names its URL, never its password)."""

    code = 18
    status = 503


class DatabaseBusy(ApiError):
    """The database's write lock, a row lock or a pooled connection was not free in time;
    nothing was written, retry later.

    Answered well within the caller's deadline (another writer held the lock), instead of a
    request that outlives its caller without a word in any log."""

    code = 19
    status = 503


def api_codes() -> list[tuple[int, int, str, str]]:
    """Every code the API answers with: (code, HTTP status, class name, meaning), by code.

    The OpenAPI document and `docs/error-codes.md` list exactly these.
    """
    seen: dict[int, type[ApiError]] = {}
    pending: list[type[ApiError]] = list(ApiError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        seen.setdefault(int(cls.code), cls)
        pending.extend(cls.__subclasses__())
    return [
        (code, cls.status, cls.__name__, (cls.__doc__ or cls.__name__).split("\n")[0].strip())
        for code, cls in sorted(seen.items())
    ]
