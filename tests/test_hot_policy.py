"""The hot HSM's own limits hold whatever custody asks, and survive a restart."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from hsm_hot.errors import (
    DailyFeeAboveLimit,
    FeeAboveLimit,
    FeeRateAboveLimit,
    PolicyRefused,
    RateLimited,
)
from hsm_hot.policy import HotPolicy, PolicyLedger, SendCost


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def ledger(tmp_path, clock, **limits):
    return PolicyLedger(tmp_path / "policy.db", HotPolicy(**limits), clock=clock)


def test_per_send_limit(tmp_path, clock):
    led = ledger(tmp_path, clock, max_send_sat=1000)
    led.check_send(1, 1000, 1)
    with pytest.raises(PolicyRefused, match="exceeds the per-send limit of 1000 sat"):
        led.check_send(1, 1001, 1)


def test_outputs_limit(tmp_path, clock):
    led = ledger(tmp_path, clock, max_outputs=2)
    with pytest.raises(PolicyRefused, match="3 outputs exceeds 2"):
        led.check_send(1, 10, 3)


def test_daily_limit_rolls_and_survives_restart(tmp_path, clock):
    led = ledger(tmp_path, clock, max_daily_sat=1500)
    led.reserve_send(1, 1000, 1, "aa" * 32)
    led.close()
    led = ledger(tmp_path, clock, max_daily_sat=1500)
    with pytest.raises(PolicyRefused, match="1000 sat already signed today"):
        led.check_send(1, 501, 1)
    led.check_send(2, 1500, 1)  # another account has its own budget
    clock.now += 86_401
    led.check_send(1, 1500, 1)


def test_rate_limit_per_minute(tmp_path, clock):
    led = ledger(tmp_path, clock, max_requests_per_minute=3)
    for _ in range(3):
        led.admit_request(7)
    with pytest.raises(RateLimited, match="more than 3 signing requests"):
        led.admit_request(7)
    led.admit_request(8)
    clock.now += 61
    led.admit_request(7)


def test_reservation_counts_at_once_and_cancel_gives_it_back(tmp_path, clock):
    led = ledger(tmp_path, clock, max_daily_sat=1000)
    first = led.reserve_send(1, 600, 1, "aa" * 32)
    with pytest.raises(PolicyRefused, match="600 sat already signed today"):
        led.reserve_send(1, 600, 1, "bb" * 32)  # refused before the first is even signed
    led.cancel_send(first)
    assert led.spent_today(1) == 0
    led.reserve_send(1, 600, 1, "bb" * 32)


def test_fee_limits_per_send_rate_and_day(tmp_path, clock):
    led = ledger(tmp_path, clock, max_fee_sat=1000, max_fee_rate=5, max_fee_per_day_sat=1500)
    with pytest.raises(FeeAboveLimit) as info:
        led.reserve_send(1, SendCost(10, 1001, 1000), 1, "aa" * 32)
    assert info.value.code == 920
    with pytest.raises(FeeRateAboveLimit, match="exceeds the limit of 5 sat/vB") as info:
        led.reserve_send(1, SendCost(10, 600, 100), 1, "aa" * 32)
    assert info.value.code == 921
    led.reserve_send(1, SendCost(10, 900, 200), 1, "aa" * 32)
    with pytest.raises(DailyFeeAboveLimit, match="900 sat of fees signed today") as info:
        led.reserve_send(1, SendCost(10, 700, 200), 1, "bb" * 32)
    assert info.value.code == 922
    led.reserve_send(2, SendCost(10, 700, 200), 1, "bb" * 32)  # another account


def test_the_fee_counts_against_the_amount_limits(tmp_path, clock):
    led = ledger(tmp_path, clock, max_send_sat=1000, max_daily_sat=1500)
    with pytest.raises(PolicyRefused, match="send of 1001 sat exceeds the per-send limit"):
        led.reserve_send(1, SendCost(900, 101), 1, "aa" * 32)
    led.reserve_send(1, SendCost(900, 100), 1, "aa" * 32)
    assert led.spent_today(1) == 1000 and led.fees_today(1) == 100


def test_a_batch_is_held_to_the_per_send_limits_member_by_member(tmp_path, clock):
    """Each member of a batched payout is one send to the per-send and outputs limits; the
    transaction's payments and its one fee count against the day."""
    led = ledger(tmp_path, clock, max_send_sat=1000, max_daily_sat=2500, max_outputs=2)
    led.reserve_batch(1, SendCost(1800, 50), [(900, 2), (900, 2)], "a" * 64)  # 1800 > 1000 ok
    assert led.spent_today(1) == 1850
    with pytest.raises(PolicyRefused, match="send of 1001 sat exceeds the per-send limit"):
        led.reserve_batch(1, SendCost(1101), [(100, 2), (1001, 2)], "b" * 64)
    with pytest.raises(PolicyRefused, match="3 outputs exceeds 2"):
        led.reserve_batch(1, SendCost(200), [(100, 2), (100, 3)], "c" * 64)
    with pytest.raises(PolicyRefused, match="batch of 700 sat would exceed the daily limit"):
        led.reserve_batch(1, SendCost(600, 100), [(300, 2), (300, 2)], "d" * 64)
    assert led.spent_today(1) == 1850  # nothing refused was counted


def test_concurrent_changes_are_durable_when_each_call_returns(tmp_path, clock):
    """Requests share commits, but none returns before its own change is on disk: another
    connection (a restart) sees every request and reservation, and a cancel, at once."""
    led = ledger(tmp_path, clock, max_daily_sat=10**9)
    seen: list[tuple[int, int]] = []
    first: dict[int, int] = {}  # account -> its first reservation
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(10):
            led.admit_request(n)
            rid = led.reserve_send(n, 100 + i, 2, f"tx{n}-{i}")
            first.setdefault(n, rid)
            other = sqlite3.connect(tmp_path / "policy.db")
            with lock:
                seen.append(
                    other.execute("SELECT COUNT(*) FROM sends WHERE rowid = ?", (rid,)).fetchone()
                    + other.execute(
                        "SELECT COUNT(*) FROM requests WHERE account = ?", (n,)
                    ).fetchone()
                )
            other.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 60
    assert all(sends == 1 and requests >= 1 for sends, requests in seen)
    led.cancel_send(first[0])  # 100 sat of account 0 given back
    other = sqlite3.connect(tmp_path / "policy.db")
    assert other.execute("SELECT COUNT(*) FROM sends").fetchone() == (59,)
    assert other.execute("SELECT COUNT(*) FROM requests").fetchone() == (60,)
    other.close()
    led.close()
    assert ledger(tmp_path, clock).spent_today(0) == sum(100 + i for i in range(1, 10))
