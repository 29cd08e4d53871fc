"""The cold HSM's limit windows (fees of the day, the policy's day and hour) answered from the
sums beside the tables give exactly what the SQL over the rows gives, through conflicts, rolled
back transactions and savepoints, fee bumps, and days of sends (the sums forgetting old rows)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsm_cold import replacement
from hsm_cold import store as store_mod
from hsm_cold.policy_store import PolicyStore
from hsm_cold.store import AccountRecord, ColdStore, Signing


class _Boom(Exception):
    pass


def _signing(account: int, number: str, txid: str, fee: int) -> Signing:
    return Signing(account, number, txid, b"d" * 32, (b"s" * 64,), fee, ((900, b"x"),), None)


def _policy_sql(store: ColdStore, account: int, t: float) -> tuple[int, int]:
    with store.transaction() as db:
        return PolicyStore._sent_since_sql(db, account, t)


@pytest.mark.parametrize("seed", range(4))
def test_the_windows_match_the_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rnd = random.Random(seed)
    clock = [1_000_000.0]
    fake_time = SimpleNamespace(time=lambda: clock[0])
    monkeypatch.setattr(store_mod, "time", fake_time)
    monkeypatch.setattr(replacement, "time", fake_time)
    store = ColdStore(tmp_path / "cold.db")
    for account in (7, 8):
        store.add_account(AccountRecord(account, "regtest", b"s", b"c", b"h", "tpub", b"v", "w()"))
    policies = PolicyStore(store)
    signed: list[tuple[int, str, str]] = []  # (account, user_tx_no, txid)
    checked = 0
    for n in range(400):
        clock[0] += rnd.choice([0.0, 1.0, 90.0, 1_800.0, 20_000.0, -30.0])  # ties, days, back
        account = rnd.choice((7, 8))
        op = rnd.random()
        if op < 0.5 or not signed:  # a send, as the service records it
            number = f"u{n}"
            with store.transaction():
                assert store.record_signing(_signing(account, number, f"{n:064x}", n * 7 + 1))
                policies.record_send(account, number, n * 1_000, [f"addr{n % 5}"], clock[0])
            signed.append((account, number, f"{n:064x}"))
        elif op < 0.6:  # a number used before: nothing recorded
            a, number, _ = rnd.choice(signed)
            assert not store.record_signing(_signing(a, number, f"{n:064x}", 5))
        elif op < 0.7:  # recorded, then the co-sign fails: all of it rolled back
            with pytest.raises(_Boom), store.transaction():
                store.record_signing(_signing(account, f"x{n}", f"{n:064x}", 999))
                policies.record_send(account, f"x{n}", 10**9, ["gone"], clock[0])
                raise _Boom
        elif op < 0.75:  # a savepoint rolled back inside a transaction that commits
            with store.transaction():
                with pytest.raises(_Boom), store.transaction():
                    store.record_signing(_signing(account, f"y{n}", f"{n:064x}", 777))
                    policies.record_send(account, f"y{n}", 10**8, ["gone"], clock[0])
                    raise _Boom
                store.note_refusal(account, f"y{n}", 4)
        elif op < 0.85:  # a sweep, or one that lost its race
            index = store.get_account(account).settlement_index  # type: ignore[union-attr]
            if rnd.random() < 0.3:
                index += 1
            store.record_sweep(account, index, f"{n:064x}", b"d", "ok", n * 3, [(f"{n:064x}", 0)])
        else:  # a fee bump of a signed send
            a, number, txid = rnd.choice(signed)
            new_txid = f"{n + 10**6:064x}"
            assert replacement.adopt(store, _signing(a, number, new_txid, n * 11), txid)
            signed = [(a2, u, new_txid if u == number else t) for a2, u, t in signed]
        for a in (7, 8):
            for t in (clock[0] - 86_400, clock[0] - 3_600, clock[0] - rnd.uniform(0, 4 * 86_400)):
                assert store.fees_since(a, t) == store._fees_since_sql(a, t), (n, a, t)
            day, hour, _ = policies.window(a, clock[0], [])
            assert (day, hour) == (
                _policy_sql(store, a, clock[0] - 86_400)[1],
                _policy_sql(store, a, clock[0] - 3_600)[0],
            ), (n, a)
            checked += 1
    assert store._fees.floor > 1_000_000.0  # the sums forgot the oldest days as time went on
    assert checked == 800


def test_a_reopened_store_loads_the_sums_from_the_tables(tmp_path: Path) -> None:
    store = ColdStore(tmp_path / "cold.db")
    store.add_account(AccountRecord(7, "regtest", b"s", b"c", b"h", "tpub", b"v", "w()"))
    PolicyStore(store).record_send(7, "u1", 5_000, ["a"], 100.0)
    assert store.record_signing(_signing(7, "u1", "ab" * 32, 300))
    store.close()
    again = ColdStore(tmp_path / "cold.db")
    assert again.fees_since(7, 0.0) == 300
    assert PolicyStore(again).window(7, 200.0, ["a", "b"]) == (5_000, 1, frozenset({"a"}))
