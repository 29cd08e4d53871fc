"""`custody up` and `custody status` (filled in by the supervisor work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    del sub


__all__ = ["register", "argparse"]
