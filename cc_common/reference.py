"""Closed sets of wire values fixed by the ChainCloud reference (section 2), in one place.

The V-device posts a batch verdict as the number `2` or `3` to both the merchant site and
custody; every side reads and writes it through `BatchVerdict`, never a bare digit.
"""

from __future__ import annotations

import enum


class BatchVerdict(enum.IntEnum):
    """Reference batch `status`: 1 while the V-device has not checked it, then 2 or 3."""

    UNVERIFIED = 1
    VERIFIED = 2
    FAILED = 3


REPORTABLE = (BatchVerdict.VERIFIED, BatchVerdict.FAILED)
