"""Sub-commands of `firmware-sim` for this part (placeholder until built)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add this part's sub-commands to the `firmware-sim` parser."""
    del sub
