"""The hash-chained journal (DESIGN invariant 7): appends chain, and `verify` (and
`custody journal verify`) finds an edited, a deleted, a reordered record and a cut tail,
naming the first bad record. Concurrent appends never fork the chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update

from custody import journal
from custody.cli import main as custody_main
from custody.models import JournalEntry
from tests.api_fixtures import write_database_config
from tests.harness import in_threads


def fill(factory, n: int = 6) -> list[int]:
    with factory() as s, s.begin():
        for i in range(n):
            journal.append(
                s, journal.JournalKind.ACCOUNT_CREATED, i % 2 or None, {"n": i, "text": "é"}
            )
    with factory() as s:
        return list(s.execute(select(JournalEntry.id).order_by(JournalEntry.id)).scalars())


def swap(factory, id_a: int, id_b: int) -> None:
    """Exchange two whole records (content, hashes), keeping their ids: a reordering."""
    cols = ("at", "kind", "account_id", "data", "prev_hash", "hash")
    with factory() as s, s.begin():
        a, b = (s.get(JournalEntry, i) for i in (id_a, id_b))
        va, vb = ({c: getattr(x, c) for c in cols} for x in (a, b))
        s.execute(update(JournalEntry).where(JournalEntry.id == id_a).values(hash="tmp"))
        s.execute(update(JournalEntry).where(JournalEntry.id == id_b).values(**va))
        s.execute(update(JournalEntry).where(JournalEntry.id == id_a).values(**vb))


def check(factory) -> journal.VerifyResult:
    with factory() as s:
        return journal.verify(s)


def test_chain_verifies(session_factory):
    assert check(session_factory).ok and check(session_factory).count == 0
    ids = fill(session_factory)
    r = check(session_factory)
    assert r.ok and r.count == len(ids)
    with session_factory() as s:
        rows = s.execute(select(JournalEntry).order_by(JournalEntry.id)).scalars().all()
        assert rows[0].prev_hash == journal.GENESIS
        assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))


def test_edited_record_is_found(session_factory):
    ids = fill(session_factory)
    with session_factory() as s, s.begin():
        s.execute(update(JournalEntry).where(JournalEntry.id == ids[3]).values(data='{"n":999}'))
    r = check(session_factory)
    assert not r.ok and r.first_bad_id == ids[3] and "edited" in r.reason


def test_deleted_record_is_found(session_factory):
    ids = fill(session_factory)
    with session_factory() as s, s.begin():
        s.execute(delete(JournalEntry).where(JournalEntry.id == ids[2]))
    r = check(session_factory)
    assert not r.ok and r.first_bad_id == ids[3] and "deleted" in r.reason


def test_reordered_records_are_found(session_factory):
    ids = fill(session_factory)
    swap(session_factory, ids[1], ids[4])
    r = check(session_factory)
    assert not r.ok and r.first_bad_id == ids[1]


def test_cut_tail_is_found(session_factory):
    ids = fill(session_factory)
    with session_factory() as s, s.begin():
        s.execute(delete(JournalEntry).where(JournalEntry.id >= ids[4]))
    r = check(session_factory)
    assert not r.ok and "removed from the end" in r.reason


def test_concurrent_appends_keep_one_chain(session_factory):
    def work(k: int) -> None:
        for i in range(10):
            with session_factory() as s, s.begin():
                # a kind no merchant event stands for: accounts k need not exist
                journal.append(s, journal.JournalKind.TOKEN_ISSUED, k, {"i": i})

    in_threads(work, 4)
    r = check(session_factory)
    assert r.ok and r.count == 40
    with session_factory() as s:
        assert s.execute(select(func.count(func.distinct(JournalEntry.prev_hash)))).scalar() == 40


@pytest.mark.parametrize("damage", ["edit", "delete", "reorder", "none"])
def test_cli_journal_verify(tmp_path: Path, db_url: str, session_factory, damage, capsys):
    write_database_config(tmp_path, db_url)
    ids = fill(session_factory)
    if damage == "reorder":
        swap(session_factory, ids[2], ids[3])
    with session_factory() as s, s.begin():
        if damage == "edit":
            s.execute(update(JournalEntry).where(JournalEntry.id == ids[2]).values(kind="x"))
        elif damage == "delete":
            s.execute(delete(JournalEntry).where(JournalEntry.id == ids[2]))
    code = custody_main(["journal", "verify", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    if damage == "none":
        assert code == 0 and "journal ok: 6 entries" in out
    else:
        assert code == 1 and "BROKEN at entry" in out
        bad = ids[3] if damage == "delete" else ids[2]
        assert f"entry {bad}" in out
