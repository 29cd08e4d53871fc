"""The cold HSM's signed statement of an account's state (active or frozen, by whom, why).

Custody's view of a freeze follows the HSMs: the cold HSM signs this statement with its
identity key, the hot HSM relays it, and custody verifies it against the identity key it
stored at provisioning. A relay (or a hacked custody host) can withhold it but not forge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PREFIX = "CC:ACCOUNT_STATE"
HOT_SIDE_PREFIX = "frozen from the hot side: "  # how the cold HSM records a relayed freeze
MAX_REASON = 500


class FreezeOrigin(StrEnum):
    """Who froze an account."""

    NONE = "none"
    OPERATOR = "operator"  # `custody account freeze`, relayed to both HSMs
    HOT_HSM = "hot_hsm"
    COLD_HSM = "cold_hsm"  # the cold HSM itself (e.g. a send the V-device did not sign)


@dataclass(frozen=True)
class AccountState:
    account: int
    frozen: bool
    origin: FreezeOrigin
    reason: str
    issued_at: int  # unix seconds, by the cold HSM's clock

    def statement(self) -> str:
        state = "frozen" if self.frozen else "active"
        return (
            f"{PREFIX}:{self.account}:{state}:{self.origin.value}:{self.issued_at}:"
            f"{self.reason[:MAX_REASON]}"
        )


def cold_origin(frozen: bool, reason: str) -> FreezeOrigin:
    """Who froze, from the cold HSM's record: a relayed freeze is the operator's."""
    if not frozen:
        return FreezeOrigin.NONE
    if reason.startswith(HOT_SIDE_PREFIX):
        return FreezeOrigin.OPERATOR
    return FreezeOrigin.COLD_HSM
