"""Small closed sets shared by the token modules."""

from __future__ import annotations

from enum import Enum


class Provisioned(Enum):
    """What an idempotent create did: made the object, or found it already there."""

    CREATED = "created"
    ALREADY_PRESENT = "already_present"


class PinRole(Enum):
    """Whose PIN is tried: the user's (daily operation) or the security officer's (reset)."""

    USER = "user"
    SO = "so"
