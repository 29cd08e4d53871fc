"""The root exception of every package, below all of them.

It lives in its own package so that `wallet_core` (which needs an error base) and `cc_common`
(which uses `wallet_core`) do not import each other. The ranges of numeric codes each package
may use are in `cc_errors.registry`.
"""

from __future__ import annotations


class CustodyError(Exception):
    """Root of every error this project raises on purpose.

    `code` is stable: errors cross process boundaries (HTTP bodies, link refusals) and clients
    switch on it. Code 1 means "internal error", as in the custody API.
    """

    code: int = 1

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


__all__ = ["CustodyError"]
