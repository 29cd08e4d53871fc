"""Balances and confirmations, read from what the chain watcher recorded.

Confirmations are never stored: they follow from the watcher's best block (`blocks_seen`), so
a new block or a reorg changes every count at once without touching transaction rows. A
balance counts confirmed funds only: unspent outputs (not spent by any transaction we know,
mempool included) whose block is at least `min_conf` deep.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from custody.models import BlockSeen, Utxo, Wallet

Conn = Session | Connection

# Built once (bind parameters): the API's `/user` runs it on every cache miss.
_CONFIRMED = select(func.coalesce(func.sum(Utxo.value), 0)).where(
    Utxo.account_id == bindparam("account_id"),
    Utxo.wallet == bindparam("wallet"),
    Utxo.spent_by.is_(None),
    Utxo.block_height.is_not(None),
    Utxo.block_height <= bindparam("max_height"),
)


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
    total = session.execute(
        select(func.coalesce(func.sum(Utxo.value), 0)).where(
            Utxo.account_id == account_id,
            Utxo.wallet == wallet,
            Utxo.block_height.is_(None),
            Utxo.spent_by.is_(None),
        )
    ).scalar()
    return int(total or 0)
