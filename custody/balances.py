"""Balances and confirmations, read from what the chain watcher recorded.

Confirmations are never stored: they follow from the watcher's best block (`blocks_seen`), so
a new block or a reorg changes every count at once without touching transaction rows. A
balance counts confirmed funds only: unspent outputs (not spent by any transaction we know,
mempool included) whose block is at least `min_conf` deep.

Reads never sum an account's outputs: `account_balances` holds each side's unspent total,
kept by database triggers in the transaction of every UTXO change (`custody.balance_sql`);
a balance is that total less the outputs of the newest `min_conf - 1` blocks (an index
range). `verify_balances`, the operator's check, recomputes the sums and compares each row
with the journal's newest record of it (`custody.balance_journal`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, case, func, select
from sqlalchemy.orm import Session

from custody.models import AccountBalance, BlockSeen, JournalEntry, Utxo, Wallet

Conn = Session | Connection

_SIDE = (
    AccountBalance.account_id == bindparam("account_id"),
    AccountBalance.wallet == bindparam("wallet"),
)
# Built once (bind parameters): the API's `/user` runs it on every cache miss. The mined
# total less what the newest blocks (above max_height) brought.
_MINED_TOTAL = select(AccountBalance.confirmed).where(*_SIDE).scalar_subquery()
_TOO_RECENT = (
    select(func.coalesce(func.sum(Utxo.value), 0))
    .where(
        Utxo.account_id == bindparam("account_id"),
        Utxo.wallet == bindparam("wallet"),
        Utxo.block_height > bindparam("max_height"),
        Utxo.spent_by.is_(None),
    )
    .scalar_subquery()
)
_CONFIRMED = select(func.coalesce(_MINED_TOTAL, 0) - _TOO_RECENT)
_UNCONFIRMED = select(AccountBalance.unconfirmed).where(*_SIDE)


def tip_height(session: Conn) -> int | None:
    """Height of the watcher's best block, or None before the first block was processed."""
    return session.execute(select(func.max(BlockSeen.height))).scalar()


def confirmations(tip: int | None, block_height: int | None) -> int:
    """Confirmations of something mined at `block_height` (0 when unconfirmed)."""
    if tip is None or block_height is None or block_height > tip:
        return 0
    return tip - block_height + 1


def confirmed_balance(session: Conn, account_id: int, wallet: Wallet, min_conf: int = 1) -> int:
    """Satoshis of the account side's unspent outputs with at least `min_conf` confirmations."""
    return confirmed_balance_at(session, tip_height(session), account_id, wallet, min_conf)


def confirmed_balance_at(
    session: Conn, tip: int | None, account_id: int, wallet: Wallet, min_conf: int = 1
) -> int:
    """`confirmed_balance` at a tip the caller already read (so a cached value matches its key)."""
    if tip is None:
        return 0
    params = {"account_id": account_id, "wallet": wallet, "max_height": tip - max(min_conf, 1) + 1}
    return int(session.execute(_CONFIRMED, params).scalar() or 0)


def unconfirmed_balance(session: Conn, account_id: int, wallet: Wallet) -> int:
    """Satoshis arriving in mempool transactions (shown apart, never counted as received)."""
    total = session.execute(_UNCONFIRMED, {"account_id": account_id, "wallet": wallet}).scalar()
    return int(total or 0)


@dataclass(frozen=True)
class BalanceMismatch:
    """An account side whose maintained balance differs from the sum of its outputs, or from
    the journal's newest record of it (None: no record, or the row changed since)."""

    account_id: int
    wallet: Wallet
    maintained: tuple[int, int]  # (mined, mempool) as kept by the triggers
    summed: tuple[int, int]  # (mined, mempool) recomputed from `utxos`
    journalled: tuple[int, int] | None = None  # the journal's newest record of the side

    def describe(self) -> str:
        why = []
        if self.summed != self.maintained:
            why.append(f"outputs sum to {self.summed[0]} + {self.summed[1]}")
        if self.journalled is None:
            why.append("not recorded in the journal since its last change")
        elif self.journalled != self.maintained:
            why.append(f"the journal records {self.journalled[0]} + {self.journalled[1]}")
        return (
            f"account {self.account_id} {self.wallet.name.lower()}: maintained "
            f"{self.maintained[0]} mined + {self.maintained[1]} mempool, {'; '.join(why)}"
        )


def _journalled(session: Conn, account_id: int, wallet: Wallet) -> tuple[int, int] | None:
    """The side's totals in its newest `balance` journal record (newest first by the
    (kind, account) index), or None when the journal has none."""
    side = wallet.name.lower()
    rows = session.execute(
        select(JournalEntry.data)
        .where(JournalEntry.kind == "balance", JournalEntry.account_id == account_id)
        .order_by(JournalEntry.id.desc())
    )
    for (data,) in rows:
        record = json.loads(data)
        if record.get("wallet") == side:
            return int(record["confirmed"]), int(record["unconfirmed"])
    return None


def verify_balances(session: Conn) -> list[BalanceMismatch]:
    """Every account side whose `account_balances` row differs from its unspent outputs'
    sums (a missing row counts as zero), or from the journal's newest `balance` record of it
    (`custody.balance_journal`; a side never changed needs none). Reads all unspent
    outputs: an operator's check, not a request path. The journal's own chain is checked by
    `custody.journal.verify`."""
    mined = Utxo.block_height.is_not(None)
    sums = session.execute(
        select(
            Utxo.account_id,
            Utxo.wallet,
            func.sum(case((mined, Utxo.value), else_=0)),
            func.sum(case((mined, 0), else_=Utxo.value)),
        )
        .where(Utxo.spent_by.is_(None))
        .group_by(Utxo.account_id, Utxo.wallet)
    ).all()
    summed = {(r[0], Wallet(r[1])): (int(r[2] or 0), int(r[3] or 0)) for r in sums}
    kept = {
        (r[0], Wallet(r[1])): ((int(r[2]), int(r[3])), bool(r[4]))
        for r in session.execute(
            select(
                AccountBalance.account_id,
                AccountBalance.wallet,
                AccountBalance.confirmed,
                AccountBalance.unconfirmed,
                AccountBalance.unjournalled,
            )
        ).all()
    }
    out = []
    for side in sorted(summed.keys() | kept.keys()):
        have, unjournalled = kept.get(side, ((0, 0), False))
        want = summed.get(side, (0, 0))
        recorded = None if unjournalled else _journalled(session, *side)
        if recorded is None and have == (0, 0) and not unjournalled:
            recorded = have  # never changed (or back at zero with no record): nothing to hold
        if have != want or recorded != have:
            out.append(BalanceMismatch(side[0], side[1], have, want, recorded))
    return out
