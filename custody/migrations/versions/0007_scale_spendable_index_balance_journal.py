"""utxos: index of the free coins by value; account balances journalled

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:30:00.000000

Coin selection reads the largest coins and those either side of the payment, consolidation
the smallest: index ranges on (account, side, value) over the coins neither spent nor
reserved, so neither reads all of an account's coins.

`account_balances.unjournalled` marks a row changed since the journal last recorded it (the
triggers of `custody.balance_sql` set it, recreated here; `custody.balance_journal` records
and clears it). Existing rows start marked, so the next change journals them; the journal's
(kind, account) index finds a side's newest balance record for `custody balance verify`; a
partial index finds the marked rows at each commit without scanning every account.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from custody import balance_sql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPENDABLE = "spent_by IS NULL AND reserved_by_send IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_utxos_spendable",
        "utxos",
        ["account_id", "wallet", "value", "id"],
        unique=False,
        postgresql_where=sa.text(SPENDABLE),
        sqlite_where=sa.text(SPENDABLE),
    )
    op.create_index("ix_journal_kind_account", "journal", ["kind", "account_id", "id"])
    bind = op.get_bind()
    for statement in balance_sql.drop_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)
    with op.batch_alter_table(balance_sql.TABLE, schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unjournalled", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_index(
        "ix_account_balances_unjournalled",
        balance_sql.TABLE,
        ["account_id", "wallet"],
        postgresql_where=sa.text("unjournalled"),
        sqlite_where=sa.text("unjournalled"),
    )
    bind.exec_driver_sql("UPDATE account_balances SET unjournalled = true")
    for statement in balance_sql.create_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for statement in balance_sql.drop_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)
    op.drop_index("ix_account_balances_unjournalled", table_name=balance_sql.TABLE)
    with op.batch_alter_table(balance_sql.TABLE, schema=None) as batch_op:
        batch_op.drop_column("unjournalled")
    op.drop_index("ix_journal_kind_account", table_name="journal")
    op.drop_index("ix_utxos_spendable", table_name="utxos")
