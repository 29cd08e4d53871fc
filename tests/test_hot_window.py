"""cc_common.window: the in-memory window sums give exactly what the SQL `SUM ... WHERE at > t`
gives, whatever the order of the rows (a clock that went back), removals and forgetting."""

from __future__ import annotations

import random
import sqlite3

import pytest

from cc_common import sqlite_tx
from cc_common.window import WindowSums
from hsm_hot.ledger_store import LedgerStore


def brute(rows: dict[int, tuple[int, float, int, int]], account: int, t: float) -> tuple:
    mine = [r for r in rows.values() if r[0] == account and r[1] > t]
    return len(mine), (sum(r[2] for r in mine), sum(r[3] for r in mine))


@pytest.mark.parametrize("seed", range(5))
def test_sums_match_a_full_scan(seed: int) -> None:
    rnd = random.Random(seed)
    sums = WindowSums(2)
    sums.load([], float("-inf"))
    rows: dict[int, tuple[int, float, int, int]] = {}
    now = 1000.0
    for key in range(600):
        now += rnd.choice([0.0, 0.5, 3.0, -7.0])  # ties and a clock that goes back
        op = rnd.random()
        if op < 0.7:
            row = (rnd.randrange(3), now, rnd.randrange(1, 10**6), rnd.randrange(10**4))
            rows[key] = row
            sums.add(row[0], row[1], key, (row[2], row[3]))
        elif op < 0.85 and rows:
            gone = rnd.choice(list(rows))
            del rows[gone]
            sums.remove(gone)
        elif op < 0.9:
            before = now - rnd.uniform(50, 200)
            sums.drop_until(before)
            rows = {k: r for k, r in rows.items() if r[1] > before}
        for account in range(3):
            t = now - rnd.uniform(-5, 300)
            held = sums.since(account, t)
            if t < sums.floor:
                assert held is None
            else:
                assert held == brute(rows, account, t), (key, account, t)


def test_ledger_sums_survive_a_restart_and_a_failed_commit(tmp_path, monkeypatch) -> None:
    path = tmp_path / "policy.db"
    store = LedgerStore(path)
    store.begin()
    a = store.add_send(1, 100.0, 5_000, "a" * 64, 100)
    store.add_send(1, 200.0, 7_000, "b" * 64, 200)
    store.add_send(2, 150.0, 1_000, "c" * 64, 10)
    store.remove_send(a)
    store.add_request(1, 200.0)
    store.commit()
    assert (store.spent_since(1, 50.0), store.fees_since(1, 50.0)) == (7_000, 200)
    store.close()

    store = LedgerStore(path)  # rebuilt from the tables
    assert (store.spent_since(1, 50.0), store.fees_since(1, 150.0)) == (7_000, 200)
    assert store.spent_since(2, 149.0) == 1_000 and store.spent_since(2, 150.0) == 0
    assert store.requests_since(1, 199.0) == 1 and store.requests_since(1, 200.0) == 0
    store.begin()
    store.add_send(1, 300.0, 9_000, "d" * 64, 300)
    assert store.spent_since(1, 50.0) == 16_000

    def disk_error(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_tx, "commit", disk_error)
    with pytest.raises(sqlite3.OperationalError):
        store.commit()
    assert store.spent_since(1, 50.0) == 7_000  # the lost send no longer counts
    monkeypatch.undo()
    store.close()
