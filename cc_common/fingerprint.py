"""Short readable fingerprints of identity keys, for the out-of-band steps of provisioning.

A person reads one off a console or a phone and types it on another machine, so a custody
server that swapped a key in transit is caught. 100 bits (25 hex digits in five groups) keep
it typeable while making a key that matches a given fingerprint out of reach (2^100 work).
"""

from __future__ import annotations

import hashlib
import re

GROUPS = 5
GROUP_LEN = 5
_HEX = re.compile(r"[0-9a-f]+")


def fingerprint(pubkey: bytes) -> str:
    """`sha256(pubkey)` as five dash-separated groups of five hex digits."""
    digest = hashlib.sha256(b"cc-identity:" + pubkey).hexdigest()[: GROUPS * GROUP_LEN]
    return "-".join(digest[i : i + GROUP_LEN] for i in range(0, len(digest), GROUP_LEN))


def normalise(typed: str) -> str | None:
    """What a person typed (any case, spaces or dashes), in the canonical form; None if it
    cannot be a fingerprint."""
    compact = re.sub(r"[\s-]", "", typed).lower()
    if len(compact) != GROUPS * GROUP_LEN or not _HEX.fullmatch(compact):
        return None
    return "-".join(compact[i : i + GROUP_LEN] for i in range(0, len(compact), GROUP_LEN))


def matches(pubkey: bytes, typed: str) -> bool:
    return normalise(typed) == fingerprint(pubkey)
