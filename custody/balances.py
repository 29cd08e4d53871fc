"""Balances and confirmations, read from what the chain watcher recorded.

Confirmations are never stored: they follow from the watcher's best block (`blocks_seen`), so
a new block or a reorg changes every count at once without touching transaction rows. A
balance counts confirmed funds only: unspent outputs (not spent by any transaction we know,
mempool included) whose block is at least `min_conf` deep.

Reads never sum an account's outputs: `account_balances` holds each side's unspent total,
kept by database triggers in the transaction of every UTXO change (`custody.balance_sql`);
a balance is that total less the outputs of the newest `min_conf - 1` blocks (an index
range). `verify_balances` recomputes the sums, for the operator's check.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, case, func, select
from sqlalchemy.orm import Session

from custody.models import AccountBalance, BlockSeen, Utxo, Wallet

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
    """An account side whose maintained balance differs from the sum of its outputs."""

    account_id: int
    wallet: Wallet
    maintained: tuple[int, int]  # (mined, mempool) as kept by the triggers
    summed: tuple[int, int]  # (mined, mempool) recomputed from `utxos`

    def describe(self) -> str:
        return (
            f"account {self.account_id} {self.wallet.name.lower()}: maintained "
            f"{self.maintained[0]} mined + {self.maintained[1]} mempool, outputs sum to "
            f"{self.summed[0]} + {self.summed[1]}"
        )


def verify_balances(session: Conn) -> list[BalanceMismatch]:
    """Every account side whose `account_balances` row differs from its unspent outputs' sums
    (a missing row counts as zero). Reads all unspent outputs: an operator's check, not a
    request path."""
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
        (r[0], Wallet(r[1])): (int(r[2]), int(r[3]))
        for r in session.execute(
            select(
                AccountBalance.account_id,
                AccountBalance.wallet,
                AccountBalance.confirmed,
                AccountBalance.unconfirmed,
            )
        ).all()
    }
    out = []
    for side in sorted(summed.keys() | kept.keys()):
        have, want = kept.get(side, (0, 0)), summed.get(side, (0, 0))
        if have != want:
            out.append(BalanceMismatch(side[0], side[1], have, want))
    return out
