"""Errors shared by the processes: the root class and configuration errors.

Each package defines its own base class deriving from `CustodyError`; its numeric codes stay
inside the package's range in `cc_errors.registry`.
"""

from __future__ import annotations

from cc_errors import CustodyError


class ConfigError(CustodyError):
    """The configuration is missing, malformed or unsafe (e.g. a placeholder secret)."""

    code = 100


__all__ = ["ConfigError", "CustodyError"]
