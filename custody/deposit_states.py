"""Deposit states: what the merchant may rely on, each transition recorded with its time.

seen (mempool) -> confirmed (n, from the tip) -> final (at `final_confirmations` depth).
A transaction that leaves the mempool unconfirmed ends `replaced` (another spend of one of its
inputs took its place in the mempool, e.g. a BIP125 replacement that pays us less or nothing),
`conflicted` (an input was spent in a block) or `dropped` (no spend of its inputs is known:
evicted or expired). A block holding it leaving the chain makes it `reorged` until it is mined
again. Only confirmed coins ever count in a balance (`custody.balances`); these states are what
`GET /tx` shows in its `cc_state` extension and what the deposit journal entries say.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody import journal
from custody.chain.errors import RPCError
from custody.journal import JournalKind
from custody.models import ChainTx, ChainTxInput, DepositState, TxStateChange, TxStatus, utcnow

# The journal entry written for each state a deposit (a transaction paying the side) enters.
JOURNAL_KIND = {state: JournalKind(f"deposit_{state.value}") for state in DepositState}


def enter(
    s: Session, row: ChainTx, state: DepositState, confirmations: int = 0, *, new: bool = False
) -> bool:
    """Move `row` to `state` (recorded with the time); False if it is there already.

    `new`: the row was just inserted, so its first state is recorded whatever its default.
    """
    if not new and row.state is state:
        return False
    now = utcnow()
    row.state = state
    row.state_at = now
    if row.id is None:
        s.flush()  # the row gets its id (many new rows: flush them first, in one go)
    s.add(TxStateChange(chain_tx_id=row.id, state=state, confirmations=confirmations, at=now))
    return True


def journal_deposit(
    s: Session, row: ChainTx, state: DepositState, extra: dict[str, Any] | None = None
) -> None:
    """The journal entry of a deposit's transition (spends have the send journal)."""
    if row.value <= 0:
        return
    data = {"txid": row.txid, "wallet": row.wallet.name.lower(), "value": row.value}
    journal.append(s, JOURNAL_KIND[state], row.account_id, {**data, **(extra or {})})


def finalize(s: Session, tip: int, depth: int) -> int:
    """Confirmed transactions `depth` deep at `tip` become final; returns how many."""
    rows = s.execute(
        select(ChainTx)
        .where(
            ChainTx.status == TxStatus.CONFIRMED,
            ChainTx.state == DepositState.CONFIRMED,
            ChainTx.block_height <= tip - max(depth, 1) + 1,
        )
        .order_by(ChainTx.id)  # the journal's order, not the rows' place on disk
    ).scalars()
    count = 0
    for row in list(rows):
        assert row.block_height is not None
        confs = tip - row.block_height + 1
        if enter(s, row, DepositState.FINAL, confs):
            journal_deposit(s, row, DepositState.FINAL, {"confirmations": confs})
            count += 1
    return count


def why_removed(s: Session, rpc: Any, row: ChainTx) -> DepositState:
    """Why an unconfirmed transaction left the node's mempool, from its inputs' fate.

    An input spent in the chain: conflicted. Else an input spent in the mempool: replaced.
    Else nothing spends them: dropped.
    """
    inputs = s.execute(
        select(ChainTxInput.prev_tx_hash, ChainTxInput.prev_out_sn).where(
            ChainTxInput.chain_tx_id == row.id
        )
    ).all()
    replaced = False
    for prev, n in inputs:
        if n < 0:
            continue
        try:
            in_chain = rpc.get_tx_out(prev, n, False)
            parent = "chain" if in_chain is not None else _where(rpc, prev)
            if in_chain is None and parent == "chain":
                return DepositState.CONFLICTED  # the coin existed in the chain and is spent
            if parent is not None and rpc.get_tx_out(prev, n, True) is None:
                replaced = True  # an unconfirmed spend other than ours holds the coin
        except RPCError:
            continue
    return DepositState.REPLACED if replaced else DepositState.DROPPED


def _where(rpc: Any, txid: str) -> str | None:
    """'mempool' if the node holds `txid` unconfirmed, else 'chain' (no txindex needed: a
    parent that is in neither was itself replaced or reorged out, and so is its child)."""
    try:
        rpc.get_mempool_entry(txid)
    except RPCError:
        return "chain"
    return "mempool"
