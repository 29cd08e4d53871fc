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
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, case, insert, select, update
from sqlalchemy.orm import Session

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
    spec = _FROM_JOURNAL.get(kind)
    if spec is None or account_id is None:
        return
    name, side, fields = spec
    publish(s, account_id, name, side(data), fields(data))


def _next_seq(s: Session, account_id: int) -> int:
    step = (
        update(EventCounter)
        .where(EventCounter.account_id == account_id)
        .values(last_seq=EventCounter.last_seq + 1)
        .returning(EventCounter.last_seq)
    )
    seq = s.execute(step).scalar()
    if seq is not None:
        return int(seq)
    insert_or_nothing(s, EventCounter, account_id=account_id, last_seq=0)
    return int(s.execute(step).scalar_one())


def publish(s: Session, account_id: int, kind: str, side: EventSide, data: dict[str, Any]) -> Event:
    """Append an event in the caller's transaction and queue it for the account's endpoints."""
    event = Event(
        account_id=account_id,
        seq=_next_seq(s, account_id),
        kind=kind,
        side=side,
        data=json.dumps(data, sort_keys=True, separators=(",", ":")),
        at=utcnow(),
    )
    s.add(event)
    s.flush()
    endpoints = s.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.side).where(
            WebhookEndpoint.account_id == account_id, WebhookEndpoint.removed_at.is_(None)
        )
    ).all()
    for endpoint_id, endpoint_side in endpoints:
        if sees(endpoint_side, side):
            s.add(
                WebhookDelivery(
                    endpoint_id=endpoint_id, event_id=event.id, status=DeliveryStatus.PENDING
                )
            )
    s.flush()
    return event


def publish_many(s: Session, entries: list[tuple[str, int | None, dict[str, Any]]]) -> int:
    """The events of many journal entries (kind, account, data), in their order: each
    account's counter moved once for all its events, the events and their deliveries
    inserted in one statement each (`journal.batched`); returns how many. The numbers are
    those `from_journal` one by one would give."""
    items: list[tuple[int, str, EventSide, Any]] = []
    for kind, account_id, data in entries:
        spec = _FROM_JOURNAL.get(kind)
        if spec is None or account_id is None:
            continue
        name, side_of, fields = spec
        items.append((account_id, name, side_of(data), fields(data)))
    if not items:
        return 0
    wanted: dict[int, int] = {}
    for account_id, *_ in items:
        wanted[account_id] = wanted.get(account_id, 0) + 1
    last = _take_seqs(s, wanted)
    seq = {a: last[a] - n for a, n in wanted.items()}  # the number before each account's first
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for account_id, name, side, data in items:
        seq[account_id] += 1
        rows.append(
            {
                "account_id": account_id,
                "seq": seq[account_id],
                "kind": name,
                "side": side,
                "data": json.dumps(data, sort_keys=True, separators=(",", ":")),
                "at": now,
            }
        )
    ids = s.scalars(insert(Event).returning(Event.id, sort_by_parameter_order=True), rows).all()
    endpoints = s.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.account_id, WebhookEndpoint.side).where(
            WebhookEndpoint.account_id.in_(sorted(wanted)), WebhookEndpoint.removed_at.is_(None)
        )
    ).all()
    deliveries = [
        {"endpoint_id": endpoint_id, "event_id": event_id, "status": DeliveryStatus.PENDING}
        for event_id, row in zip(ids, rows, strict=True)
        for endpoint_id, account_id, endpoint_side in endpoints
        if account_id == row["account_id"] and sees(endpoint_side, row["side"])
    ]
    if deliveries:
        s.execute(insert(WebhookDelivery), deliveries)
    return len(rows)


def _take_seqs(s: Session, wanted: dict[int, int]) -> dict[int, int]:
    """Move each account's counter by its count in one statement; the new last numbers."""
    accounts = sorted(wanted)
    step = (
        update(EventCounter)
        .where(EventCounter.account_id.in_(accounts))
        .values(
            last_seq=EventCounter.last_seq + case(wanted, value=EventCounter.account_id, else_=0)
        )
        .returning(EventCounter.account_id, EventCounter.last_seq)
    )
    last = {int(a): int(n) for a, n in s.execute(step).all()}
    missing = [a for a in accounts if a not in last]
    for account_id in missing:
        insert_or_nothing(s, EventCounter, account_id=account_id, last_seq=0)
    if missing:
        again = step.where(EventCounter.account_id.in_(missing))
        last.update({int(a): int(n) for a, n in s.execute(again).all()})
    return last


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
