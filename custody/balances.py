"""Balances and confirmations, read from what the chain watcher recorded.

Confirmations are never stored: they follow from the watcher's best block (`blocks_seen`), so
a new block or a reorg changes every count at once without touching transaction rows. A
balance counts confirmed funds only: unspent outputs (not spent by any transaction we know,
mempool included) whose block is at least `min_conf` deep.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from custody.models import BlockSeen, Utxo, Wallet


def tip_height(session: Session) -> int | None:
    """Height of the watcher's best block, or None before the first block was processed."""
    return session.execute(select(func.max(BlockSeen.height))).scalar()


def confirmations(tip: int | None, block_height: int | None) -> int:
    """Confirmations of something mined at `block_height` (0 when unconfirmed)."""
    if tip is None or block_height is None or block_height > tip:
        return 0
    return tip - block_height + 1


def confirmed_balance(session: Session, account_id: int, wallet: Wallet, min_conf: int = 1) -> int:
    """Satoshis of the account side's unspent outputs with at least `min_conf` confirmations."""
    tip = tip_height(session)
    if tip is None:
        return 0
    max_height = tip - max(min_conf, 1) + 1
    total = session.execute(
        select(func.coalesce(func.sum(Utxo.value), 0)).where(
            Utxo.account_id == account_id,
            Utxo.wallet == wallet,
            Utxo.block_height.is_not(None),
            Utxo.block_height <= max_height,
            Utxo.spent_by.is_(None),
        )
    ).scalar()
    return int(total or 0)


def unconfirmed_balance(session: Session, account_id: int, wallet: Wallet) -> int:
    """Satoshis arriving in mempool transactions (shown apart, never counted as received)."""
    total = session.execute(
        select(func.coalesce(func.sum(Utxo.value), 0)).where(
            Utxo.account_id == account_id,
            Utxo.wallet == wallet,
            Utxo.block_height.is_(None),
            Utxo.spent_by.is_(None),
        )
    ).scalar()
    return int(total or 0)
