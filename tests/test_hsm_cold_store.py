"""The cold store keeps every freeze reason (bounded), binds each user_tx_no once, nests
transactions as savepoints, and finds paid destinations by index."""

from __future__ import annotations

from pathlib import Path

from hsm_cold.policy_store import PolicyStore
from hsm_cold.store import MAX_FROZEN_REASON, AccountRecord, ColdStore, Signing


def store_with_account(tmp_path: Path) -> ColdStore:
    store = ColdStore(tmp_path / "cold.db")
    store.add_account(
        AccountRecord(7, "regtest", b"s", b"c", b"h", "tpub", b"v", "wpkh()"),
    )
    return store


def test_freeze_reasons_are_appended_and_bounded(tmp_path: Path) -> None:
    store = store_with_account(tmp_path)
    store.set_frozen(7, True, "forged vc_code for user_tx_no 'a'")
    store.set_frozen(7, True, "frozen from the hot side: later")
    [(_, frozen, reason)] = store.list_accounts()
    assert frozen and reason == (
        "forged vc_code for user_tx_no 'a' | frozen from the hot side: later"
    )
    for n in range(500):
        store.set_frozen(7, True, f"frozen from the hot side: spam {n}")
    [(_, _, reason)] = store.list_accounts()
    assert len(reason) <= MAX_FROZEN_REASON
    assert reason.startswith("forged vc_code for user_tx_no 'a' | +")
    assert reason.endswith("spam 499") and "more (in the alert log)" in reason
    store.set_frozen(7, False)
    assert store.list_accounts() == [(7, False, "")]


def test_a_user_tx_no_is_bound_once_with_what_it_teaches(tmp_path: Path) -> None:
    store = store_with_account(tmp_path)
    store.add_known_outputs("cd" * 32, ((1000, b"y"), (5, b"z")))
    spent = (("cd" * 32, 0),)
    signing = Signing(7, "u1", "ab" * 32, b"d" * 32, (b"s" * 64,), 500, ((900, b"x"),), 4, spent)
    assert store.record_signing(signing)
    assert not store.record_signing(signing)  # atomic check-and-set
    held = store.signed_request(7, "u1")
    assert held is not None and held.signatures == (b"s" * 64,) and held.fee == 500
    assert store.known_output("ab" * 32, 0) == (900, b"x")
    assert store.known_output("cd" * 32, 0) is None  # spent by the signing: forgotten
    assert store.known_output("cd" * 32, 1) == (5, b"z")
    assert store.change_high(7) == 4 and store.change_high(8) == -1
    assert store.fees_since(7, 0) == 500


def test_a_nested_transaction_is_a_savepoint_inside_one_commit(tmp_path: Path) -> None:
    """The co-sign's records share one commit; a nested block that raises undoes only itself."""
    store = store_with_account(tmp_path)
    with store.transaction():
        store.note_refusal(7, "kept", 4)
        try:
            with store.transaction():
                store.note_refusal(7, "undone", 5)
                raise ValueError("refused midway")
        except ValueError:
            pass
        other = ColdStore(tmp_path / "cold.db")  # another reader sees nothing yet
        assert other.request_closed(7, "kept") is False
        assert other._db.execute("SELECT COUNT(*) FROM refused_requests").fetchone() == (0,)
        other.close()
    rows = store._db.execute("SELECT user_tx_no FROM refused_requests").fetchall()
    assert rows == [("kept",)]


def test_paid_destinations_are_found_and_backfilled_from_older_state(tmp_path: Path) -> None:
    store = store_with_account(tmp_path)
    rows = PolicyStore(store)
    rows.record_send(1, "a", 5_000, ["bc1qone", "bc1qtwo"], now=1_000.0)
    assert rows.window(1, 1_100.0, ["bc1qtwo", "bc1qnew"]) == (5_000, 1, frozenset({"bc1qtwo"}))
    assert rows.window(2, 1_100.0, ["bc1qtwo"])[2] == frozenset()  # another account's payee
    with store.transaction() as db:  # a state written before the destinations table
        db.execute("DROP TABLE policy_destinations")
    store.close()
    store = ColdStore(tmp_path / "cold.db")
    assert PolicyStore(store).window(1, 90_000.0, ["bc1qone"]) == (0, 0, frozenset({"bc1qone"}))
