"""Every change of a maintained balance recorded in the hash-chained journal, in its transaction.

The triggers of `custody.balance_sql` mark each `account_balances` row they change
`unjournalled`. Before a custody session commits a transaction that wrote `utxos` (an ORM
statement on the table, or `Utxo` rows flushed), `journal_balances` appends one `balance`
record per marked row with its new totals and clears the mark, so the journal holds the
balance each side had after every change, under the journal's hash chain. `custody balance
verify` then checks each row against the sums of its outputs and against its newest record:
a row edited behind the triggers' back differs from both, and rewriting the record too
breaks the chain.

Installed on every session factory `custody.db.make_session_factory` makes. Writers outside
a custody session (a bulk COPY, SQL by hand) leave rows marked: the next journalled commit
records them, and `verify` reports them until then.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from custody import journal
from custody.models import AccountBalance, Utxo, Wallet

_TOUCHED = "custody.utxos_written"


def journal_balances(session: Session) -> int:
    """Record every marked balance row (not locked by another transaction) in the journal and
    clear its mark; returns how many. Runs in the caller's transaction."""
    rows = session.execute(
        select(
            AccountBalance.account_id,
            AccountBalance.wallet,
            AccountBalance.confirmed,
            AccountBalance.unconfirmed,
        )
        .where(AccountBalance.unjournalled.is_(True))
        .order_by(AccountBalance.account_id, AccountBalance.wallet)
        # rows another transaction holds are its own to journal when it commits
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    with journal.batched(session):
        for account_id, wallet, confirmed, unconfirmed in rows:
            journal.append(
                session,
                journal.JournalKind.BALANCE,
                account_id,
                {
                    "wallet": Wallet(wallet).name.lower(),
                    "confirmed": int(confirmed),
                    "unconfirmed": int(unconfirmed),
                },
            )
    session.execute(
        update(AccountBalance),
        [
            {"account_id": account_id, "wallet": wallet, "unjournalled": False}
            for account_id, wallet, _, _ in rows
        ],
    )
    return len(rows)


def _on_execute(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete or state.is_insert) and _targets_utxos(state):
        state.session.info[_TOUCHED] = True


def _targets_utxos(state: ORMExecuteState) -> bool:
    table = getattr(state.statement, "table", None)
    return getattr(table, "name", None) == Utxo.__tablename__


def _utxos_pending(session: Session) -> bool:
    return any(isinstance(o, Utxo) for o in (*session.new, *session.dirty, *session.deleted))


def _after_flush(session: Session, _flush_context: Any) -> None:
    if _utxos_pending(session):
        session.info[_TOUCHED] = True


def _before_commit(session: Session) -> None:
    # (runs before commit's own flush: `Utxo` rows still pending count too)
    if not session.info.get(_TOUCHED) and not _utxos_pending(session):
        return
    session.flush()
    session.info.pop(_TOUCHED, None)
    journal_balances(session)


def _forget(session: Session, *_: Any) -> None:
    session.info.pop(_TOUCHED, None)


def install(factory: sessionmaker[Session]) -> None:
    """Journal the balance changes of every session `factory` makes."""
    event.listen(factory, "do_orm_execute", _on_execute)
    event.listen(factory, "after_flush", _after_flush)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_rollback", _forget)
