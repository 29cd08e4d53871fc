"""Base exceptions shared by all packages.

Each package defines its own base class deriving from `CustodyError`; errors that cross a
process boundary carry a stable numeric `code`.
"""

from __future__ import annotations


class CustodyError(Exception):
    """Root of every error this project raises on purpose."""

    code: int = 1

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class ConfigError(CustodyError):
    """The configuration is missing, malformed or unsafe (e.g. a placeholder secret)."""

    code = 10
