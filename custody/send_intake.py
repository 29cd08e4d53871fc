"""Storing accepted hot-send requests (`POST /tx/request`), many in one transaction.

Each request becomes a `sends` row, a `send_requested` journal entry (and its merchant
event), exactly as when stored alone; what a group shares is the statements: one
`INSERT ... ON CONFLICT DO NOTHING` for the rows, one journal lock and append for the entries,
one commit (`custody.group_commit` gathers the group). Each request still gets its own
outcome: a `user_tx_no` its account used before (or earlier in the same group) is a
duplicate, a frozen account's request is refused, and neither touches the others'.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, select, tuple_
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from custody import driver_sql, journal
from custody.db import is_busy, transaction
from custody.group_commit import GroupCommitter
from custody.models import Account, AccountStatus, Send, SendStatus, utcnow

log = logging.getLogger(__name__)


class Intake(enum.Enum):
    """What became of one request."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # its user_tx_no was accepted before: nothing written
    FROZEN = "frozen"  # its account is frozen: nothing written


@dataclass(frozen=True)
class NewSend:
    """A validated request whose `vc_code` custody checked (`custody.vc_check`)."""

    account_id: int
    user_tx_no: str
    coin_code: str
    outs: str
    is_dynamic_fee: int
    vc_code: str
    c_id: str

    def columns(self) -> dict[str, object]:
        """Its `sends` columns (those a request gives)."""
        return {
            "account_id": self.account_id,
            "user_tx_no": self.user_tx_no,
            "coin_code": self.coin_code,
            "outs": self.outs,
            "is_dynamic_fee": self.is_dynamic_fee,
            "vc_code": self.vc_code,
            "c_id": self.c_id,
        }

    @property
    def key(self) -> tuple[int, str]:
        return (self.account_id, self.user_tx_no)

    def journal_data(self, send_id: int) -> dict[str, object]:
        return {
            "send_id": send_id,
            "coin_code": self.coin_code,
            "user_tx_no": self.user_tx_no,
            "is_dynamic_fee": self.is_dynamic_fee,
            "outs": self.outs,
            "c_id": self.c_id,
        }


def store_sends(session: Session, sends: Sequence[NewSend]) -> list[Intake]:
    """Store `sends` in the caller's transaction; their outcomes, in order.

    Precedence as for one request: a duplicate first, then a frozen account."""
    return _store(session.connection(), sends, lambda e: journal.append_alone(session, e))


def _store(
    conn: Connection,
    sends: Sequence[NewSend],
    append: Callable[[Sequence[journal.NewEntry]], object],
) -> list[Intake]:
    """`store_sends` on `conn`, the journal entries of the accepted ones written by `append`."""
    first: dict[tuple[int, str], int] = {}
    for i, s in enumerate(sends):
        first.setdefault(s.key, i)
    frozen, inserted = _insert(conn, [sends[i] for i in first.values()])
    outcomes: list[Intake] = []
    entries: list[journal.NewEntry] = []
    for i, s in enumerate(sends):
        if first.get(s.key) == i and s.key in inserted:
            outcomes.append(Intake.ACCEPTED)
            data = s.journal_data(inserted[s.key])
            entries.append(journal.NewEntry(journal.JournalKind.SEND_REQUESTED, s.account_id, data))
        elif s.account_id in frozen:
            outcomes.append(Intake.FROZEN)
        else:
            outcomes.append(Intake.DUPLICATE)
    if frozen:
        taken = existing(conn, [s.key for s in sends if s.account_id in frozen])
        outcomes = [
            Intake.DUPLICATE if o is Intake.FROZEN and s.key in taken else o
            for s, o in zip(sends, outcomes, strict=True)
        ]
    append(entries)
    return outcomes


_FROZEN = select(Account.id).where(
    Account.id.in_(bindparam("ids", expanding=True)), Account.status == AccountStatus.FROZEN
)


def _frozen_accounts(conn: Connection, ids: set[int]) -> set[int]:
    return set(conn.execute(_FROZEN, {"ids": sorted(ids)}).scalars())


_INSERT_SQLITE = (
    sqlite_insert(Send)
    .on_conflict_do_nothing(index_elements=[Send.account_id, Send.user_tx_no])
    .returning(Send.id, Send.account_id, Send.user_tx_no)
)
# PostgreSQL: the frozen accounts and the rows of the others in one round trip, through the
# driver with the rows as one JSON text (`custody.driver_sql`); the frozen accounts come back
# as rows without an id.
_INSERT_PG = """
WITH r AS (
  SELECT * FROM json_to_recordset(%(rows)s::json)
    AS r(n int, account_id int, user_tx_no varchar, coin_code varchar, outs text,
         is_dynamic_fee int, vc_code text, c_id varchar)),
frozen AS (
  SELECT id FROM accounts WHERE id IN (SELECT account_id FROM r) AND status = %(frozen)s),
new AS (
  INSERT INTO sends (account_id, user_tx_no, coin_code, outs, is_dynamic_fee, vc_code, c_id,
                     status, failure_reason, state_reason, attempts, request_at)
  SELECT r.account_id, r.user_tx_no, r.coin_code, r.outs, r.is_dynamic_fee, r.vc_code, r.c_id,
         %(status)s, '', '', 0, %(at)s
  FROM r
  WHERE r.account_id NOT IN (SELECT id FROM frozen)
  ORDER BY r.n
  ON CONFLICT (account_id, user_tx_no) DO NOTHING
  RETURNING id, account_id, user_tx_no)
SELECT id, account_id, user_tx_no FROM new
UNION ALL SELECT NULL, id, NULL FROM frozen
"""
# What the status columns hold (SQLAlchemy's non-native enums store the member's name).
_PENDING = SendStatus.PENDING.name
_FROZEN_NAME = AccountStatus.FROZEN.name


def _insert(
    conn: Connection, sends: Sequence[NewSend]
) -> tuple[set[int], dict[tuple[int, str], int]]:
    """The frozen accounts among `sends`', and the ids of the rows inserted: those of the
    other accounts whose (account, user_tx_no) is free."""
    if not sends:
        return set(), {}
    at = utcnow()
    if conn.dialect.name == "postgresql":
        params = {
            "rows": driver_sql.rows_json([s.columns() for s in sends]),
            "frozen": _FROZEN_NAME,
            "status": _PENDING,
            "at": at,
        }
        frozen: set[int] = set()
        inserted: dict[tuple[int, str], int] = {}
        for i, a, u in driver_sql.rows(conn, _INSERT_PG, params):
            if i is None:
                frozen.add(a)
            else:
                inserted[(a, u)] = i
        return frozen, inserted
    frozen = _frozen_accounts(conn, {s.account_id for s in sends})
    rows = [
        {
            **s.columns(),
            "status": SendStatus.PENDING,
            "failure_reason": "",
            "state_reason": "",
            "attempts": 0,
            "request_at": at,
        }
        for s in sends
        if s.account_id not in frozen
    ]
    if not rows:
        return frozen, {}
    # executemany: one multi-row statement (SQLAlchemy's "insertmanyvalues"), compiled once
    result = conn.execute(_INSERT_SQLITE, rows)
    return frozen, {(a, u): i for i, a, u in result}


def existing(db: Session | Connection, keys: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which of `keys` (account, user_tx_no) have a send already."""
    if not keys:
        return set()
    conn = db.connection() if isinstance(db, Session) else db
    rows = conn.execute(
        select(Send.account_id, Send.user_tx_no).where(
            tuple_(Send.account_id, Send.user_tx_no).in_(list(keys))
        )
    )
    return {(a, u) for a, u in rows}


class _NoJournalHead(Exception):
    """The journal has no head yet: its first entry is written through a session."""


def _append_pg(conn: Connection, entries: Sequence[journal.NewEntry]) -> None:
    if journal.append_alone_pg(conn, entries) is None:
        raise _NoJournalHead


def _write_pg(engine: Engine, sends: Sequence[NewSend]) -> list[Intake] | None:
    """`store_sends` in a transaction of its own on a plain connection: every statement of a
    group goes through the driver, and an ORM session around them would only add its own
    cost (about 0.05 ms per group). None, nothing written, before the journal's first entry."""
    try:
        with engine.begin() as conn:
            return _store(conn, sends, lambda e: _append_pg(conn, e))
    except _NoJournalHead:
        return None


def committer(factory: sessionmaker[Session]) -> GroupCommitter[NewSend, Intake]:
    """The process's group committer of send requests, writing with `factory`'s sessions."""

    engine: Engine = factory.kw["bind"]
    postgres = engine.dialect.name == "postgresql"

    def write(sends: Sequence[NewSend]) -> list[Intake]:
        outcomes = _write_pg(engine, sends) if postgres else None
        if outcomes is None:
            with transaction(factory) as session:
                outcomes = store_sends(session, sends)
        accepted: dict[int, int] = {}
        for s, o in zip(sends, outcomes, strict=True):
            if o is Intake.ACCEPTED:
                accepted[s.account_id] = accepted.get(s.account_id, 0) + 1
        for account_id, n in accepted.items():
            log.info("account %d: %d send(s) accepted", account_id, n)
        return outcomes

    return GroupCommitter(write, shared_error=is_busy)
