"""The hot HSM's own spending limits, enforced whatever custody says.

A hacked custody API can ask the hot HSM for anything; these limits bound what it can get even
before the cold HSM checks the V-device's signature. Usage is persisted (`LedgerStore`, in
the hot state directory) so a restart does not reset the daily total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cc_common.config import Section
from cc_common.group_commit import GroupCommit
from hsm_hot.errors import (
    DailyFeeAboveLimit,
    FeeAboveLimit,
    FeeRateAboveLimit,
    PolicyRefused,
    RateLimited,
)
from hsm_hot.ledger_store import LedgerStore

DAY = 86_400.0
MINUTE = 60.0


@dataclass(frozen=True)
class HotPolicy:
    """Per-account limits (satoshi and counts)."""

    max_send_sat: int = 1_000_000_000  # 10 BTC per send
    max_daily_sat: int = 5_000_000_000  # 50 BTC per rolling 24 h
    max_outputs: int = 20
    max_requests_per_minute: int = 60
    max_fee_sat: int = 1_000_000  # 0.01 BTC per send
    max_fee_rate: float = 500.0  # sat/vB
    max_fee_per_day_sat: int = 10_000_000  # 0.1 BTC per rolling 24 h

    @classmethod
    def from_section(cls, section: Section) -> HotPolicy:
        d = cls()
        return cls(
            max_send_sat=section.int("max_send_sat", d.max_send_sat),
            max_daily_sat=section.int("max_daily_sat", d.max_daily_sat),
            max_outputs=section.int("max_outputs", d.max_outputs),
            max_requests_per_minute=section.int(
                "max_requests_per_minute", d.max_requests_per_minute
            ),
            max_fee_sat=section.int("max_fee_sat", d.max_fee_sat),
            max_fee_rate=section.float("max_fee_rate", d.max_fee_rate),
            max_fee_per_day_sat=section.int("max_fee_per_day_sat", d.max_fee_per_day_sat),
        )


@dataclass(frozen=True)
class SendCost:
    """What a send takes out of the wallet: payments (non-change outputs) and the fee."""

    payments: int
    fee: int = 0
    vsize: int = 0  # worst-case virtual size, for the fee rate (0: not checked)

    @property
    def total(self) -> int:
        return self.payments + self.fee


def refuse_fee(policy: HotPolicy, account: int, cost: SendCost, fees_today: int) -> None:
    """Refuse a fee above the per-send, rate or daily fee limits."""
    if cost.fee > policy.max_fee_sat:
        raise FeeAboveLimit(
            f"account {account}: fee {cost.fee} sat exceeds the per-send fee limit of"
            f" {policy.max_fee_sat} sat"
        )
    if cost.vsize and cost.fee > policy.max_fee_rate * cost.vsize:
        raise FeeRateAboveLimit(
            f"account {account}: fee rate {cost.fee / cost.vsize:.1f} sat/vB exceeds the limit"
            f" of {policy.max_fee_rate:g} sat/vB"
        )
    if fees_today + cost.fee > policy.max_fee_per_day_sat:
        raise DailyFeeAboveLimit(
            f"account {account}: fee {cost.fee} sat would exceed the daily fee limit of"
            f" {policy.max_fee_per_day_sat} sat ({fees_today} sat of fees signed today)"
        )


def refuse_if_over(
    policy: HotPolicy, account: int, amount: int, outputs: int, spent_today: int
) -> None:
    """Refuse a send over the per-send, per-day or outputs limits."""
    if outputs > policy.max_outputs:
        raise PolicyRefused(f"account {account}: {outputs} outputs exceeds {policy.max_outputs}")
    if amount > policy.max_send_sat:
        raise PolicyRefused(
            f"account {account}: send of {amount} sat exceeds the per-send limit"
            f" of {policy.max_send_sat} sat"
        )
    if spent_today + amount > policy.max_daily_sat:
        raise PolicyRefused(
            f"account {account}: send of {amount} sat would exceed the daily limit"
            f" of {policy.max_daily_sat} sat ({spent_today} sat already signed today)"
        )


class PolicyLedger:
    """Counts requests and signed amounts per account, and refuses past the limits."""

    def __init__(
        self, path: Path, policy: HotPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._store = LedgerStore(path)
        self._pruned_at = 0.0
        self._group = GroupCommit(self._lock, self._store.commit)  # one fsync, many requests

    def admit_request(self, account: int) -> None:
        """Count one signing request; refuse past the per-minute limit."""
        self.durable(self.count_request(account))

    def count_request(self, account: int) -> int:
        """`admit_request` without waiting for the disk: the change's number, for `durable`.
        Later decisions see the count at once; it is on disk after `durable(number)` (or any
        later change's)."""
        now = self._clock()
        with self._lock:
            if self._store.requests_since(account, now - MINUTE) >= (
                self.policy.max_requests_per_minute
            ):
                raise RateLimited(
                    f"account {account}: more than {self.policy.max_requests_per_minute}"
                    " signing requests in the last minute"
                )
            self._store.begin()
            self._store.add_request(account, now)
            if now - self._pruned_at > MINUTE:  # old rows only cost space: prune now and then
                self._pruned_at = now
                self._store.prune_requests(now - DAY)
                self._store.forget_sends_before(now - 2 * DAY)
            return self._group.changed()

    def durable(self, change: int) -> None:
        """Return once change `change` (and every one before it) is on disk."""
        self._group.durable(change)

    def check_send(self, account: int, amount: int, outputs: int) -> None:
        """Refuse a send over the limits (changes nothing)."""
        refuse_if_over(self.policy, account, amount, outputs, self.spent_today(account))

    def fees_today(self, account: int) -> int:
        with self._lock:
            return self._store.fees_since(account, self._clock() - DAY)

    def spent_today(self, account: int) -> int:
        with self._lock:
            return self._store.spent_since(account, self._clock() - DAY)

    def reserve_send(self, account: int, cost: SendCost | int, outputs: int, txid: str) -> int:
        """Check the limits and count the amount in one step; returns the reservation's id.

        The amount counted is what leaves the wallet: payments plus the fee. Concurrent
        co-signs of one account must not both pass a daily limit before either is recorded,
        so the amount is counted before the cold HSM is asked, and given back (`cancel_send`)
        only if the hot HSM did not sign after all.
        """
        reservation, change = self.hold_send(account, cost, outputs, txid)
        self.durable(change)
        return reservation

    def hold_send(
        self, account: int, cost: SendCost | int, outputs: int, txid: str
    ) -> tuple[int, int]:
        """`reserve_send` without waiting for the disk: (reservation id, change number). Every
        later decision counts the amount at once; the hot key must not sign before
        `durable(number)` returned, so a crash never forgets an amount it signed for."""
        if isinstance(cost, int):
            cost = SendCost(cost)
        now = self._clock()
        with self._lock:
            spent = self._store.spent_since(account, now - DAY)
            refuse_if_over(self.policy, account, cost.total, outputs, spent)
            refuse_fee(self.policy, account, cost, self._store.fees_since(account, now - DAY))
            self._store.begin()
            reservation = self._store.add_send(account, now, cost.total, txid, cost.fee)
            return reservation, self._group.changed()

    def reserve_batch(
        self, account: int, cost: SendCost, members: list[tuple[int, int]], txid: str
    ) -> int:
        """`reserve_send` for a batched transaction: each member (amount, outputs) is held to
        the per-send limits in turn, counting the members before it against the daily limit;
        the whole transaction (what it really pays, and its fee) to the daily and fee limits.
        One reservation for the total."""
        now = self._clock()
        with self._lock:
            spent = self._store.spent_since(account, now - DAY)
            running = spent
            for amount, outputs in members:
                refuse_if_over(self.policy, account, amount, outputs, running)
                running += amount
            if spent + cost.total > self.policy.max_daily_sat:
                raise PolicyRefused(
                    f"account {account}: batch of {cost.total} sat would exceed the daily limit"
                    f" of {self.policy.max_daily_sat} sat ({spent} sat already signed today)"
                )
            refuse_fee(self.policy, account, cost, self._store.fees_since(account, now - DAY))
            self._store.begin()
            reservation = self._store.add_send(account, now, cost.total, txid, cost.fee)
            change = self._group.changed()
        self._group.durable(change)
        return reservation

    def cancel_send(self, reservation: int) -> None:
        """Give back a reservation whose send the hot HSM did not sign."""
        with self._lock:
            self._store.begin()
            self._store.remove_send(reservation)
            change = self._group.changed()
        self._group.durable(change)

    def close(self) -> None:
        with self._lock:
            self._store.close()
