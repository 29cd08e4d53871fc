"""Merchant-facing events: numbered without gaps per account, readable by token, delivered
by webhooks.

Every event is written in the same database transaction as the change it reports (it is
derived from the journal entry that change writes, `from_journal`), so an event exists if and
only if its change was committed. `seq` comes from a per-account counter row updated in that
transaction: its row lock (PostgreSQL) or the write lock (SQLite) makes numbering serial, so
transactions commit in `seq` order and a reader asking `after=N` never misses a lower number
committed later. A rolled-back transaction rolls back its number too: no gaps.

Each event has a side: a hot token (and a hot webhook endpoint) sees hot and account-wide
events, a cold token cold and account-wide ones; so one token sees a subsequence of the
account's numbers, in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from custody import driver_sql
from custody.insert_or_nothing import insert_or_nothing
from custody.models import (
    DeliveryStatus,
    Event,
    EventCounter,
    EventSide,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

MAX_PAGE = 500


def _wallet_side(data: dict[str, Any]) -> EventSide:
    return EventSide.COLD if str(data.get("wallet", "")).lower() == "cold" else EventSide.HOT


def _pick(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {k: d[k] for k in keys if k in d}


_DEPOSIT = _pick("txid", "value", "height", "confirmations", "from", "to")
_SEND = _pick("user_tx_no", "txid", "reason", "height", "replaced_txid")

# journal kind -> (event kind, side of the event, public fields of the journal data)
_FROM_JOURNAL: dict[
    str, tuple[str, Callable[[dict[str, Any]], EventSide], Callable[[dict[str, Any]], Any]]
] = {
    **{
        f"deposit_{s}": (f"deposit.{s}", _wallet_side, _DEPOSIT)
        for s in ("seen", "confirmed", "final", "replaced", "conflicted", "reorged", "dropped")
    },
    "send_requested": ("send.accepted", lambda d: EventSide.HOT, _pick("user_tx_no", "outs")),
    "send_waiting": ("send.waiting", lambda d: EventSide.HOT, _SEND),
    "send_signed": ("send.signed", lambda d: EventSide.HOT, _SEND),
    "send_broadcast": ("send.broadcast", lambda d: EventSide.HOT, _SEND),
    "send_replaced": ("send.replaced", lambda d: EventSide.HOT, _SEND),
    "send_confirmed": ("send.confirmed", lambda d: EventSide.HOT, _SEND),
    "send_failed": ("send.failed", lambda d: EventSide.HOT, _SEND),
    "batch_verified": ("batch.verified", _wallet_side, _pick("batch_no")),
    "batch_failed": ("batch.failed", _wallet_side, _pick("batch_no")),
    "account_frozen": ("account.frozen", lambda d: EventSide.BOTH, _pick("reason")),
    "account_unfrozen": ("account.unfrozen", lambda d: EventSide.BOTH, _pick("reason")),
}


def from_journal(s: Session, kind: str, account_id: int | None, data: dict[str, Any]) -> None:
    """The event a journal entry stands for, if it is one merchants see."""
    from_journal_many(s, [(kind, account_id, data)])


def from_journal_many(
    s: Session, entries: Sequence[tuple[str, int | None, dict[str, Any]]]
) -> None:
    """The events journal entries stand for (those merchants see), in the entries' order."""
    publish_many(s, _from_journal(entries))


def _from_journal(entries: Sequence[tuple[str, int | None, dict[str, Any]]]) -> list[NewEvent]:
    new: list[NewEvent] = []
    for kind, account_id, data in entries:
        spec = _FROM_JOURNAL.get(kind)
        if spec is None or account_id is None:
            continue
        name, side, fields = spec
        new.append(NewEvent(account_id, name, side(data), fields(data)))
    return new


def from_journal_params_pg(
    entries: Sequence[tuple[str, int | None, dict[str, Any]]],
) -> dict[str, object] | None:
    """`from_journal_many` on PostgreSQL as the parameters of `PUBLISH_PG_CTES` and
    `PUBLISH_PG_TAIL`, for a statement that writes the journal entries and their events in
    one round trip (`journal.append_alone`); None when no entry is an event."""
    new = _from_journal(entries)
    return _params_pg(new) if new else None


@dataclass(frozen=True)
class NewEvent:
    account_id: int
    kind: str
    side: EventSide
    data: dict[str, Any]


# Built once: a request's statements are only bound and executed (no construction per call).
_TAKE_SEQS = (
    update(EventCounter)
    .where(EventCounter.account_id == bindparam("b_account"))
    .values(last_seq=EventCounter.last_seq + bindparam("n"))
    .returning(EventCounter.last_seq)
)
_ENDPOINTS = select(WebhookEndpoint.account_id, WebhookEndpoint.id, WebhookEndpoint.side).where(
    WebhookEndpoint.account_id.in_(bindparam("accounts", expanding=True)),
    WebhookEndpoint.removed_at.is_(None),
)
_INSERT_EVENTS = insert(Event).returning(Event.id, Event.account_id, Event.seq)


def _take_seqs(s: Session, account_id: int, n: int) -> int:
    """Reserve the account's next `n` numbers; returns the last of them."""
    params = {"b_account": account_id, "n": n}
    seq = s.connection().execute(_TAKE_SEQS, params).scalar()
    if seq is not None:
        return int(seq)
    insert_or_nothing(s, EventCounter, account_id=account_id, last_seq=0)
    return int(s.connection().execute(_TAKE_SEQS, params).scalar_one())


def publish(s: Session, account_id: int, kind: str, side: EventSide, data: dict[str, Any]) -> None:
    """Append an event in the caller's transaction and queue it for the account's endpoints."""
    publish_many(s, [NewEvent(account_id, kind, side, data)])


def publish_many(s: Session, new: Sequence[NewEvent]) -> None:
    """Append events (numbered in their order, per account) in the caller's transaction and
    queue each for its account's endpoints: one statement per step however many events."""
    if not new:
        return
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        driver_sql.rows(conn, _PUBLISH_PG, _params_pg(new))
        return
    per_account: dict[int, int] = {}
    for e in new:
        per_account[e.account_id] = per_account.get(e.account_id, 0) + 1
    next_seq = {a: _take_seqs(s, a, n) - n + 1 for a, n in per_account.items()}
    rows: list[dict[str, Any]] = []
    at = utcnow()
    for e in new:
        rows.append(
            {
                "account_id": e.account_id,
                "seq": next_seq[e.account_id],
                "kind": e.kind,
                "side": e.side,
                "data": json.dumps(e.data, sort_keys=True, separators=(",", ":")),
                "at": at,
            }
        )
        next_seq[e.account_id] += 1
    endpoints = conn.execute(_ENDPOINTS, {"accounts": list(per_account)}).all()
    if not endpoints:
        conn.execute(insert(Event), rows)
        return
    inserted = conn.execute(_INSERT_EVENTS, rows)
    ids = {(a, seq): i for i, a, seq in inserted}
    deliveries = [
        {
            "endpoint_id": endpoint_id,
            "event_id": ids[(row["account_id"], row["seq"])],
            "status": DeliveryStatus.PENDING,
        }
        for row in rows
        for account_id, endpoint_id, endpoint_side in endpoints
        if account_id == row["account_id"] and sees(endpoint_side, row["side"])
    ]
    if deliveries:
        conn.execute(insert(WebhookDelivery), deliveries)


# PostgreSQL, through the driver with the rows as JSON text (`custody.driver_sql`): numbers
# taken (the counter created at an account's first event), events and their deliveries
# written in one round trip, as the three statements below would write them (deliveries in
# event order, then endpoint order); enums as SQLAlchemy stores them (names). In two parts,
# so that a statement can write something else first (`journal.append_alone`).
PUBLISH_PG_CTES = """
v AS (
  SELECT * FROM json_to_recordset(%(counts)s::json) AS v(n int, account_id int, events int)),
c AS (
  INSERT INTO event_counters (account_id, last_seq) SELECT account_id, events FROM v
  ON CONFLICT (account_id) DO UPDATE SET last_seq = event_counters.last_seq + EXCLUDED.last_seq
  RETURNING account_id, last_seq),
ins AS (
  INSERT INTO events (account_id, seq, kind, side, data, at)
  SELECT r.account_id, c.last_seq - v.events + r.k, r.kind, r.side, r.data, %(at)s
  FROM json_to_recordset(%(rows)s::json)
       AS r(n int, account_id int, k int, kind varchar, side varchar, data text)
  JOIN c ON c.account_id = r.account_id JOIN v ON v.account_id = r.account_id
  ORDER BY r.n
  RETURNING id, account_id, side)
"""
PUBLISH_PG_TAIL = """
INSERT INTO webhook_deliveries (endpoint_id, event_id, status, attempts, last_result)
SELECT e.id, ins.id, %(pending)s, 0, ''
FROM ins JOIN webhook_endpoints e ON e.account_id = ins.account_id AND e.removed_at IS NULL
  AND (e.side = %(both)s OR ins.side = %(both)s OR e.side = ins.side)
ORDER BY ins.id, e.id
"""
_PUBLISH_PG = "WITH" + PUBLISH_PG_CTES + PUBLISH_PG_TAIL


def _params_pg(new: Sequence[NewEvent]) -> dict[str, object]:
    """The parameters of `_PUBLISH_PG` for `new`: each event numbered from 1 in its account
    (`k`), the statement adding the account's counter."""
    per_account: dict[int, int] = {}
    rows: list[dict[str, object]] = []
    for e in new:
        k = per_account[e.account_id] = per_account.get(e.account_id, 0) + 1
        rows.append(
            {
                "account_id": e.account_id,
                "k": k,
                "kind": e.kind,
                "side": e.side.name,
                "data": json.dumps(e.data, sort_keys=True, separators=(",", ":")),
            }
        )
    return {
        "counts": driver_sql.rows_json(
            [{"account_id": a, "events": n} for a, n in per_account.items()]
        ),
        "rows": driver_sql.rows_json(rows),
        "at": utcnow(),
        "pending": DeliveryStatus.PENDING.name,
        "both": EventSide.BOTH.name,
    }


def sees(viewer: EventSide, side: EventSide) -> bool:
    """Whether a viewer of one side (or both) sees an event of `side`."""
    return viewer is EventSide.BOTH or side is EventSide.BOTH or viewer is side


def visible_sides(viewer: EventSide) -> tuple[EventSide, ...]:
    return tuple(side for side in EventSide if sees(viewer, side))


def page(
    conn: Session | Connection, account_id: int, viewer: EventSide, after: int, limit: int
) -> list[dict[str, Any]]:
    """Events after `after` (by seq) that `viewer` sees, oldest first."""
    rows = conn.execute(
        select(*_COLUMNS)
        .where(
            Event.account_id == account_id,
            Event.seq > after,
            Event.side.in_(visible_sides(viewer)),
        )
        .order_by(Event.seq)
        .limit(max(1, min(limit, MAX_PAGE)))
    ).all()
    return [as_json(e) for e in rows]


_COLUMNS = (Event.id, Event.seq, Event.account_id, Event.kind, Event.side, Event.data, Event.at)


def as_json(event: Any) -> dict[str, Any]:
    """The wire form of an event (the API's items and each webhook's body)."""
    return {
        "id": event.id,
        "seq": event.seq,
        "account_id": event.account_id,
        "kind": event.kind,
        "side": EventSide(event.side).value,
        "at": event.at.replace(microsecond=0).isoformat(),
        "data": json.loads(event.data),
    }


def kinds(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]
