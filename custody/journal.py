"""Append-only, hash-chained journal of custody events (DESIGN invariant 7).

Each entry's hash is SHA-256 over the previous entry's hash followed by the canonical JSON of
the entry (`at`, `kind`, `account_id`, `data`), so editing, deleting or reordering a record
breaks the chain at that record. The newest hash and the number of entries are also kept in
`service_state` (key `journal_head`), so removing records from the end is detected too.

Appends are serialised so two writers never chain onto the same predecessor: PostgreSQL locks
the head row (`FOR UPDATE`; a transaction-scoped advisory lock while there is no head yet);
SQLite takes its database write lock by a no-op write on the journal table before reading the
head. The lock is held until the caller's transaction ends, so every transaction that appends
is serialised from its first append to its commit: `append_many` chains many entries under
one lock with one INSERT, and `append_alone` does so in fewer round trips for a transaction
that appends once, which is how the API's group commit (`custody.group_commit`) writes a whole
group of send requests for the price of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, inspect, select, text, update
from sqlalchemy.orm import Session

from custody import driver_sql, events
from custody.models import JournalEntry, KeyValue, utcnow

GENESIS = "0" * 64
HEAD_KEY = "journal_head"
# Arbitrary constant naming the journal's advisory lock (bigint) on PostgreSQL.
ADVISORY_LOCK_ID = 0x4343_4A4F_5552  # "CCJOUR"
_LOCKED_IN = "journal_head"  # session.info: (the transaction holding the lock, its head row)
_BATCH = "journal_batch"  # session.info: the `_Batch` of `batched`, while one is open


class JournalKind(StrEnum):
    """Every kind of event custody records; the value is what the journal stores."""

    ACCOUNT_CREATED = "account_created"
    TOKEN_ISSUED = "token_issued"  # noqa: S105 (an event name)
    TOKEN_ROTATED = "token_rotated"  # noqa: S105 (an event name)
    ACCOUNT_FROZEN = "account_frozen"
    ACCOUNT_UNFROZEN = "account_unfrozen"
    BATCH_CREATED = "batch_created"
    BATCH_PROVEN = "batch_proven"
    BATCH_VERIFIED = "batch_verified"
    BATCH_FAILED = "batch_failed"
    SEND_REQUESTED = "send_requested"
    SEND_BUILT = "send_built"
    SEND_SIGNED = "send_signed"
    SEND_BROADCAST = "send_broadcast"
    SEND_CONFIRMED = "send_confirmed"
    SEND_FAILED = "send_failed"
    DEPOSIT_SEEN = "deposit_seen"
    DEPOSIT_CONFIRMED = "deposit_confirmed"
    DEPOSIT_REORGED = "deposit_reorged"
    DEPOSIT_FINAL = "deposit_final"
    DEPOSIT_REPLACED = "deposit_replaced"
    DEPOSIT_CONFLICTED = "deposit_conflicted"
    DEPOSIT_DROPPED = "deposit_dropped"
    SEND_WAITING = "send_waiting"
    SEND_REPLACED = "send_replaced"
    CONSOLIDATION = "consolidation"
    CONSOLIDATION_SCHEDULED = "consolidation_scheduled"  # the schedule started one (why)
    BALANCE = "balance"  # an account side's maintained totals after a change


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def entry_hash(prev_hash: str, at: datetime, kind: str, account_id: int | None, data: str) -> str:
    body = canonical_json(
        {"at": _iso(at), "kind": kind, "account_id": account_id, "data": json.loads(data)}
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_ID})
    else:
        # A write statement makes SQLite take its write lock now (it changes no row).
        session.execute(update(JournalEntry).where(JournalEntry.id == -1).values(kind="x"))


def _locked_head(session: Session) -> KeyValue | None:
    """The head row, holding the journal's lock until the transaction ends.

    PostgreSQL: the head row's own lock (`FOR UPDATE`, one round trip), and the advisory
    lock only while the journal has no head yet (its first append); SQLite: its write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        head = session.get(KeyValue, HEAD_KEY, populate_existing=True, with_for_update=True)
        if head is not None:
            return head
    _lock(session)
    return session.get(
        KeyValue,
        HEAD_KEY,
        populate_existing=True,
        with_for_update=session.get_bind().dialect.name == "postgresql",
    )


def _head(session: Session) -> KeyValue | None:
    """The journal's head row, under the journal lock. Both are taken once per transaction:
    after that the head loaded in it is current (no other writer can move it), so a block with
    many deposits appends its entries without taking the lock and re-reading the head each
    time. The row is kept in `session.info` (the identity map holds it only weakly)."""
    current = session.get_transaction()
    held = session.info.get(_LOCKED_IN)
    if current is not None and held is not None and held[0] is current:
        head: KeyValue | None = held[1]
        if head is None or inspect(head).persistent:  # not undone by a savepoint's rollback
            return head
    head = _locked_head(session)
    session.info[_LOCKED_IN] = (current, head)
    return head


_INSERT_ENTRIES = insert(JournalEntry).returning(JournalEntry.id)


@dataclass(frozen=True)
class NewEntry:
    """One record to append: what happened, to which account, with which data."""

    kind: JournalKind
    account_id: int | None
    data: dict[str, Any]


@dataclass
class _Batch:
    """Entries appended inside `batched`, chained in memory and not written yet; the head is
    read (and the journal locked) at the first append."""

    started: bool = False
    head: KeyValue | None = None
    prev_hash: str = GENESIS
    count: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    entries: list[NewEntry] = field(default_factory=list)


def _chain_state(session: Session, head: KeyValue | None) -> tuple[str, int]:
    """The newest entry's hash and the number of entries, under the journal lock."""
    if head is not None:
        state = json.loads(head.value)
        return str(state["hash"]), int(state["count"])
    last = session.execute(
        select(JournalEntry.hash).order_by(JournalEntry.id.desc()).limit(1)
    ).scalar()
    count = int(session.execute(select(func.count(JournalEntry.id))).scalar() or 0)
    return last or GENESIS, count


def _chain(prev_hash: str, entries: Sequence[NewEntry], rows: list[dict[str, Any]]) -> list[str]:
    """Chain `entries` onto `prev_hash`, adding their rows to `rows`; their hashes in order."""
    digests = []
    for e in entries:
        at = utcnow()
        body = canonical_json(e.data)
        digest = entry_hash(prev_hash, at, e.kind, e.account_id, body)
        rows.append(
            {
                "at": at,
                "kind": str(e.kind),
                "account_id": e.account_id,
                "data": body,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        digests.append(digest)
        prev_hash = digest
    return digests


def _write(
    session: Session,
    head: KeyValue | None,
    rows: list[dict[str, Any]],
    count: int,
    entries: Sequence[NewEntry],
) -> None:
    """Write chained rows, the new head (`count` entries in all) and the entries' events."""
    session.flush()  # what the caller added first (its rows the entries name) is written
    # executemany: SQLAlchemy sends one multi-row INSERT ... RETURNING (its "insertmanyvalues")
    new_id = max(session.connection().execute(_INSERT_ENTRIES, rows).scalars().all())
    new_head = canonical_json({"hash": rows[-1]["hash"], "count": count, "id": new_id})
    if head is None:
        head = KeyValue(key=HEAD_KEY, value=new_head)
        session.add(head)
        session.info[_LOCKED_IN] = (session.get_transaction(), head)
    else:
        head.value = new_head  # by the ORM: a savepoint's rollback restores it with the row
    session.flush()
    events.from_journal_many(session, [(e.kind, e.account_id, e.data) for e in entries])


@contextmanager
def batched(session: Session) -> Iterator[None]:
    """Entries appended inside are chained at once (each hash is known when `append`
    returns) and written at the end by one `_write`, instead of about five statements per
    entry. For a writer of many entries per transaction (the watcher: two or three per
    deposit); nothing inside may read the journal or the events. Written only when the block
    ends without an error."""
    if session.info.get(_BATCH) is not None:
        yield  # already batching: the outer block writes
        return
    batch = _Batch()
    session.info[_BATCH] = batch
    try:
        yield
    finally:
        session.info.pop(_BATCH, None)
    if batch.rows:
        _write(session, batch.head, batch.rows, batch.count, batch.entries)


def append(
    session: Session, kind: JournalKind, account_id: int | None, data: dict[str, Any]
) -> str:
    """Add one entry in the caller's transaction; returns its hash."""
    return append_many(session, [NewEntry(kind, account_id, data)])[0]


def append_many(session: Session, entries: Sequence[NewEntry]) -> list[str]:
    """Add `entries`, chained in their order, in the caller's transaction; returns their hashes.

    One lock, one multi-row INSERT and one head update however many entries: the same chain
    as appending them one by one, at the cost of one append (the API's group commit). Inside
    `batched`, they join the batch and are written with it."""
    if not entries:
        return []
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is not None:
        if not batch.started:
            batch.head = _head(session)
            batch.prev_hash, batch.count = _chain_state(session, batch.head)
            batch.started = True
        digests = _chain(batch.prev_hash, entries, batch.rows)
        batch.entries.extend(entries)
        batch.prev_hash = digests[-1]
        batch.count += len(entries)
        return digests
    head = _head(session)
    prev_hash, count = _chain_state(session, head)
    rows: list[dict[str, Any]] = []
    digests = _chain(prev_hash, entries, rows)
    _write(session, head, rows, count + len(entries), entries)
    return digests


# The head row's value with its last field (the newest id) left for the statement to add.
def _head_prefix(prev_hash: str, count: int) -> str:
    text_ = canonical_json({"count": count, "hash": prev_hash, "id": 0})
    return text_[: -len("0}")]


_HEAD_VALUE = select(KeyValue.value).where(KeyValue.key == HEAD_KEY)
_SET_HEAD = update(KeyValue).where(KeyValue.key == HEAD_KEY).values(value=bindparam("head"))
_SQLITE_LOCK = update(JournalEntry).where(JournalEntry.id == -1).values(kind="x")
# PostgreSQL, through the driver (`custody.driver_sql`): the head, locked; then the entries
# (one JSON text for any number, ids in the chain's order), the new head and the entries'
# events (`events.PUBLISH_PG_CTES`) in one round trip.
_HEAD_VALUE_LOCKED_PG = "SELECT value FROM service_state WHERE key = %(key)s FOR UPDATE"
_APPEND_CTES_PG = """
new AS (
  INSERT INTO journal (at, kind, account_id, data, prev_hash, hash)
  SELECT r.at, r.kind, r.account_id, r.data, r.prev_hash, r.hash
  FROM json_to_recordset(%(entries)s::json)
       AS r(n int, at timestamp, kind varchar, account_id int, data text, prev_hash varchar,
            hash varchar)
  ORDER BY r.n
  RETURNING id)
"""
_SET_HEAD_PG = """
UPDATE service_state SET value = %(head)s || (SELECT max(id) FROM new) || '}'
WHERE key = %(key)s
"""
_APPEND_PG = "WITH" + _APPEND_CTES_PG + _SET_HEAD_PG
# (a data-modifying WITH runs whether or not the statement reads it)
_APPEND_PUBLISH_PG = (
    "WITH"
    + _APPEND_CTES_PG
    + ", head AS ("
    + _SET_HEAD_PG
    + "RETURNING 1),"
    + events.PUBLISH_PG_CTES
    + events.PUBLISH_PG_TAIL
)


def append_alone(session: Session, entries: Sequence[NewEntry]) -> list[str]:
    """`append_many` for a transaction of its own that appends once (the API's group commit):
    the same rows, head and events, but the head read and written by plain statements (no ORM
    object: about 0.4 ms less per call) and, on PostgreSQL, the entries, the head and their
    events written in one round trip (2 statements under the journal lock with the commit).

    No ORM head to restore, so no savepoint may be rolled back around it; a later `append` in
    the same transaction reads the head again. The journal's first entry goes by
    `append_many` (it creates the head row)."""
    if not entries:
        return []
    if session.info.get(_BATCH) is not None:
        return append_many(session, entries)
    session.flush()
    session.info.pop(_LOCKED_IN, None)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        digests = append_alone_pg(conn, entries)
        return append_many(session, entries) if digests is None else digests
    conn.execute(_SQLITE_LOCK)  # takes SQLite's write lock before the head is read
    value = conn.execute(_HEAD_VALUE).scalar()
    if value is None:
        return append_many(session, entries)
    rows, digests, prefix = _chain_onto(value, entries)
    new_id = max(conn.execute(_INSERT_ENTRIES, rows).scalars().all())
    conn.execute(_SET_HEAD, {"head": f"{prefix}{new_id}}}"})
    events.from_journal_many(session, [(e.kind, e.account_id, e.data) for e in entries])
    return digests


def append_alone_pg(conn: Connection, entries: Sequence[NewEntry]) -> list[str] | None:
    """`append_alone` on PostgreSQL in `conn`'s transaction, for a writer without an ORM
    session (the group commit, whose statements all go through the driver); None, with
    nothing written, when the journal has no head yet (its first entry needs `append_many`)."""
    if not entries:
        return []
    found = driver_sql.rows(conn, _HEAD_VALUE_LOCKED_PG, {"key": HEAD_KEY})
    if not found or found[0][0] is None:
        return None
    rows, digests, prefix = _chain_onto(found[0][0], entries)
    params: dict[str, object] = {
        "entries": driver_sql.rows_json(rows),
        "head": prefix,
        "key": HEAD_KEY,
    }
    publish = events.from_journal_params_pg([(e.kind, e.account_id, e.data) for e in entries])
    if publish is None:
        driver_sql.rows(conn, _APPEND_PG, params)
    else:
        driver_sql.rows(conn, _APPEND_PUBLISH_PG, {**params, **publish})
    return digests


def _chain_onto(
    head_value: str, entries: Sequence[NewEntry]
) -> tuple[list[dict[str, Any]], list[str], str]:
    """The rows of `entries` chained onto the head `head_value`, their hashes, and the new
    head's value but for its last field (`_head_prefix`)."""
    state = json.loads(head_value)
    count = int(state["count"]) + len(entries)
    rows: list[dict[str, Any]] = []
    digests = _chain(str(state["hash"]), entries, rows)
    return rows, digests, _head_prefix(digests[-1], count)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    first_bad_id: int | None = None
    reason: str = ""
    last_id: int | None = None  # the newest verified entry: where an incremental check resumes
    last_hash: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"journal ok: {self.count} entries, chain intact"
        where = f"entry {self.first_bad_id}" if self.first_bad_id is not None else "the end"
        return f"journal BROKEN at {where}: {self.reason}"


def verify(
    session: Session,
    *,
    batch: int = 5000,
    after_id: int = 0,
    prev_hash: str = GENESIS,
    verified_before: int = 0,
) -> VerifyResult:
    """Walk the chain in id order; report the first record that does not fit.

    `after_id`/`prev_hash`/`verified_before` resume after entries an earlier call verified (the
    operator console re-checks only what was appended); `count` is then the new entries only.
    """
    prev = prev_hash
    count = 0
    last_id = after_id
    while True:
        rows = session.execute(
            select(JournalEntry)
            .where(JournalEntry.id > last_id)
            .order_by(JournalEntry.id)
            .limit(batch)
        ).scalars()
        got = 0
        for e in rows:
            got += 1
            count += 1
            last_id = e.id
            if e.prev_hash != prev:
                return VerifyResult(
                    False, count, e.id, "does not follow the previous record (deleted/reordered)"
                )
            try:
                expected = entry_hash(e.prev_hash, e.at, e.kind, e.account_id, e.data)
            except ValueError:
                return VerifyResult(False, count, e.id, "data is not JSON (edited)")
            if expected != e.hash:
                return VerifyResult(False, count, e.id, "content does not match its hash (edited)")
            prev = e.hash
        session.expunge_all()
        if got < batch:
            break
    head = session.get(KeyValue, HEAD_KEY)
    if head is not None:
        state = json.loads(head.value)
        if state.get("hash") != prev or state.get("count") != verified_before + count:
            return VerifyResult(
                False,
                count,
                None,
                f"the newest record is not the recorded head ({state.get('count')} entries "
                f"recorded, {verified_before + count} found): records were removed from the end",
            )
    return VerifyResult(True, count, last_id=last_id if last_id else None, last_hash=prev)
