"""The customer's spending policy: one model shared by the cold HSM (which enforces it) and
the V-device (which applies the same rules first, to refuse early and say why).

A policy always has limits: there is no "no limit" value, so a forgotten setting can never
mean "anything goes". Changes are statements signed with the V-device's identity key; a change
that loosens any limit waits `loosen_delay` seconds (the owner can cancel it meanwhile), one
that only tightens applies at once. The defaults are documented in docs/threat-model.md.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cc_common.errors import CustodyError

DAY = 86_400
HOUR = 3_600
MAX_WHITELIST = 20
MAX_LOOSEN_DELAY = 30 * DAY
# The shortest delay the cold HSM accepts unless its `[hsm_cold] min_loosen_delay` says
# otherwise (the officer may choose a short delay; the default is a day). A policy text itself
# may say as little as SHORTEST_LOOSEN_DELAY: the cold HSM, which enforces, holds the floor.
MIN_LOOSEN_DELAY = 10
SHORTEST_LOOSEN_DELAY = 1
_ADDRESS = re.compile(r"[a-zA-Z0-9]{14,90}")
_FIELD = re.compile(r"([a-z_]+)=([^;]*)")

# The marker inside what the V-device signs when the owner approved a send (see
# `approved_request_string`): the canonical request keeps its sorted keys.
APPROVED_KEY = ',"owner_approved":1'
_USER_TX_NO_KEY = ',"user_tx_no":"'


class PolicyFormatError(CustodyError):
    """A policy (text, configuration or change statement) is malformed or out of range."""

    code = 120


@dataclass(frozen=True)
class SpendingPolicy:
    """Limits on hot sends of one account (amounts in satoshi, the delay in seconds).

    - `max_send_sat`: the total paid by one send (change excluded);
    - `max_daily_sat`: the total of the sends co-signed in any rolling 24 hours;
    - `max_sends_per_hour`: sends co-signed in any rolling hour;
    - `approval_above_sat`: a send paying more than this needs the owner's approval;
    - `approve_new_destinations`: a send paying an address never paid before needs it too;
    - `whitelist`: when not empty, the only addresses a send may pay;
    - `loosen_delay`: how long a loosening waits before it applies.
    """

    max_send_sat: int
    max_daily_sat: int
    max_sends_per_hour: int
    approval_above_sat: int
    approve_new_destinations: bool = False
    whitelist: tuple[str, ...] = ()
    loosen_delay: int = DAY

    def __post_init__(self) -> None:
        for name in ("max_send_sat", "max_daily_sat", "max_sends_per_hour", "approval_above_sat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyFormatError(f"policy: {name} must be a positive integer")
        if self.max_send_sat > self.max_daily_sat:
            raise PolicyFormatError("policy: max_send_sat cannot exceed max_daily_sat")
        if not SHORTEST_LOOSEN_DELAY <= self.loosen_delay <= MAX_LOOSEN_DELAY:
            raise PolicyFormatError(
                f"policy: loosen_delay must be {SHORTEST_LOOSEN_DELAY}..{MAX_LOOSEN_DELAY} seconds"
            )
        object.__setattr__(self, "whitelist", tuple(sorted(set(self.whitelist))))  # one form
        if len(self.whitelist) > MAX_WHITELIST:
            raise PolicyFormatError(f"policy: at most {MAX_WHITELIST} whitelisted addresses")
        for address in self.whitelist:
            if not _ADDRESS.fullmatch(address):
                raise PolicyFormatError(f"policy: whitelist entry {address[:20]!r} is no address")

    # -- text form (signed statements, SMS, the cold console) --------------------------------

    def to_text(self) -> str:
        """The canonical one-line form: fixed key order, no spaces, one spelling per policy."""
        return ";".join(
            (
                f"max_send={self.max_send_sat}",
                f"max_daily={self.max_daily_sat}",
                f"per_hour={self.max_sends_per_hour}",
                f"approve_above={self.approval_above_sat}",
                f"new_dest={int(self.approve_new_destinations)}",
                f"delay={self.loosen_delay}",
                f"whitelist={','.join(sorted(self.whitelist))}",
            )
        )

    @classmethod
    def from_text(cls, text: str) -> SpendingPolicy:
        """Parse `to_text`'s form exactly (every key once, in order); refuse anything else."""
        if not isinstance(text, str) or len(text) > 2000:
            raise PolicyFormatError("policy: not a policy text")
        values: dict[str, str] = {}
        for part in text.split(";"):
            m = _FIELD.fullmatch(part)
            if m is None or m.group(1) in values:
                raise PolicyFormatError(f"policy: malformed field {part[:30]!r}")
            values[m.group(1)] = m.group(2)
        keys = ("max_send", "max_daily", "per_hour", "approve_above", "new_dest", "delay")
        if tuple(values) != (*keys, "whitelist"):
            raise PolicyFormatError("policy: fields missing, unknown or out of order")
        try:
            numbers = [int(values[k]) for k in keys if re.fullmatch(r"[0-9]{1,16}", values[k])]
        except ValueError:
            numbers = []
        if len(numbers) != len(keys) or numbers[4] not in (0, 1):
            raise PolicyFormatError("policy: a number field is not a plain number")
        whitelist = tuple(a for a in values["whitelist"].split(",") if a)
        policy = cls(
            max_send_sat=numbers[0],
            max_daily_sat=numbers[1],
            max_sends_per_hour=numbers[2],
            approval_above_sat=numbers[3],
            approve_new_destinations=bool(numbers[4]),
            whitelist=whitelist,
            loosen_delay=numbers[5],
        )
        if policy.to_text() != text:
            raise PolicyFormatError("policy: not in the canonical form (whitelist unsorted?)")
        return policy

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: SpendingPolicy) -> SpendingPolicy:
        """`base` with the keys of a configuration table (same names as the fields) replaced."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise PolicyFormatError(f"policy: unknown key(s) {', '.join(sorted(unknown))}")
        changes: dict[str, Any] = dict(values)
        if "whitelist" in changes:
            wl = changes["whitelist"]
            if not isinstance(wl, list | tuple) or not all(isinstance(a, str) for a in wl):
                raise PolicyFormatError("policy: whitelist must be a list of addresses")
            changes["whitelist"] = tuple(wl)
        if "approve_new_destinations" in changes and not isinstance(
            changes["approve_new_destinations"], bool
        ):
            raise PolicyFormatError("policy: approve_new_destinations must be true or false")
        return replace(base, **changes)

    def summary(self) -> str:
        """Short, human: for SMS announcements and the console."""
        wl = f", only {len(self.whitelist)} address(es)" if self.whitelist else ""
        new = ", new destinations need approval" if self.approve_new_destinations else ""
        return (
            f"max {self.max_send_sat} sat/send, {self.max_daily_sat} sat/24h,"
            f" {self.max_sends_per_hour} sends/h, approval above {self.approval_above_sat} sat"
            f"{new}{wl}, loosening delay {self.loosen_delay}s"
        )

    # -- comparisons ---------------------------------------------------------------------------

    def loosens(self, old: SpendingPolicy) -> list[str]:
        """What `self` allows that `old` did not (empty: a pure tightening or no change)."""
        looser = [
            name
            for name in (
                "max_send_sat",
                "max_daily_sat",
                "max_sends_per_hour",
                "approval_above_sat",
            )
            if getattr(self, name) > getattr(old, name)
        ]
        if self.loosen_delay < old.loosen_delay:
            looser.append("loosen_delay")
        if old.approve_new_destinations and not self.approve_new_destinations:
            looser.append("approve_new_destinations")
        if old.whitelist and (not self.whitelist or set(self.whitelist) - set(old.whitelist)):
            looser.append("whitelist")
        return looser


DEFAULT_POLICY = SpendingPolicy(
    max_send_sat=25_000_000,  # 0.25 BTC per send
    max_daily_sat=50_000_000,  # 0.5 BTC per rolling 24 h
    max_sends_per_hour=10,
    approval_above_sat=20_000_000,  # a send above 0.2 BTC waits for the owner
    approve_new_destinations=False,
    whitelist=(),
    loosen_delay=DAY,
)


# -- one send against a policy (the same rules on the phone and in the cold HSM) ------------


@dataclass(frozen=True)
class SpendHistory:
    """What was co-signed (or signed, on the phone) in the windows the policy looks at."""

    sent_last_day_sat: int
    sends_last_hour: int
    paid_before: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    """`refusal`: why the send may not go at all; `needs_approval`: why the owner must say so."""

    refusal: str | None
    needs_approval: tuple[str, ...]


def judge(
    policy: SpendingPolicy, destinations: Sequence[str], total_sat: int, history: SpendHistory
) -> Verdict:
    """The policy's answer for one send paying `total_sat` to `destinations`."""
    if policy.whitelist:
        outside = [a for a in destinations if a not in policy.whitelist]
        if outside:
            return Verdict(f"destination {outside[0]} is not whitelisted", ())
    if total_sat > policy.max_send_sat:
        return Verdict(f"{total_sat} sat is over the per-send limit of {policy.max_send_sat}", ())
    if history.sent_last_day_sat + total_sat > policy.max_daily_sat:
        return Verdict(
            f"{history.sent_last_day_sat} + {total_sat} sat is over the 24 h limit of"
            f" {policy.max_daily_sat}",
            (),
        )
    if history.sends_last_hour >= policy.max_sends_per_hour:
        return Verdict(
            f"{history.sends_last_hour} sends in the last hour (limit {policy.max_sends_per_hour})",
            (),
        )
    reasons = []
    if total_sat > policy.approval_above_sat:
        reasons.append(f"{total_sat} sat is above the approval threshold")
    if policy.approve_new_destinations:
        new = [a for a in destinations if a not in history.paid_before]
        if new:
            reasons.append(f"{len(new)} destination(s) never paid before")
    return Verdict(None, tuple(reasons))


# -- what the V-device signs -----------------------------------------------------------------


def approved_request_string(request: str) -> str:
    """The canonical request with the owner's approval inside: `"owner_approved":1` between
    `outs` and `user_tx_no` (keys stay sorted). The V-device signs this form only after the
    owner's valid `CC:APPROVE`; a site or custody cannot add the flag to a signed request."""
    if request.count(_USER_TX_NO_KEY) != 1:
        raise PolicyFormatError("not a canonical send request")
    return request.replace(_USER_TX_NO_KEY, APPROVED_KEY + _USER_TX_NO_KEY, 1)


def signed_forms(request: str) -> tuple[str, str]:
    """(plain, approved): the two texts a genuine `vc_code` may sign; whoever checks a
    `vc_code` (the cold HSM, custody) accepts either, and only the second is an approval."""
    return request, approved_request_string(request)


def change_statement(account: int, seq: int, policy: SpendingPolicy) -> str:
    """What the V-device's identity key signs to change the account's policy."""
    return f"CC:POLICY:{account}:{seq}:{policy.to_text()}"


# -- the cold HSM's answer to a change (texted to the V-device, signed by its identity key) ---


class AckState(enum.StrEnum):
    """What the cold HSM made of change `seq`; `pending` is the only state that changes."""

    APPLIED = "applied"  # in force (detail: when it applied)
    PENDING = "pending"  # a loosening waiting for its delay (detail: when it applies)
    CANCELLED = "cancelled"  # by the owner during the delay (detail: when)
    SUPERSEDED = "superseded"  # a later change replaced it before it applied (detail: 0)
    REFUSED = "refused"  # never applies (detail: the cold HSM's error code)


ACK_PREFIX = "CC:POLICY_ACK:"
_ACK = re.compile(
    r"CC:POLICY_ACK:([0-9]{1,10}):([0-9]{1,10}):([a-z]{1,12}):([0-9]{1,12}):([A-Za-z0-9+/=]{88})"
)


@dataclass(frozen=True)
class PolicyAck:
    """`CC:POLICY_ACK:<account>:<seq>:<state>:<detail>:<identity signature>`."""

    account: int
    seq: int
    state: AckState
    detail: int

    def statement(self) -> str:
        return f"{ACK_PREFIX}{self.account}:{self.seq}:{self.state.value}:{self.detail}"

    @classmethod
    def parse(cls, text: str) -> tuple[PolicyAck, str]:
        """(the ack, its signature) from the SMS text; the signature is not checked here."""
        m = _ACK.fullmatch(text.strip())
        if m is None:
            raise PolicyFormatError("policy ack: malformed")
        try:
            state = AckState(m.group(3))
        except ValueError:
            raise PolicyFormatError(f"policy ack: unknown state {m.group(3)!r}") from None
        return cls(int(m.group(1)), int(m.group(2)), state, int(m.group(4))), m.group(5)
