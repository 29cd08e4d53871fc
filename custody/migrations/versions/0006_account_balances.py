"""account balances: each account side's unspent total, kept by triggers on utxos

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00.000000

The table is filled from the existing outputs, then the triggers of `custody.balance_sql`
keep it in step; the index serves the "less the newest blocks" part of a balance.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from custody import balance_sql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        balance_sql.TABLE,
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column(
            "wallet",
            sa.Enum("HOT", "COLD", name="wallet", native_enum=False, length=8),
            nullable=False,
        ),
        sa.Column("confirmed", sa.BigInteger(), nullable=False),
        sa.Column("unconfirmed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("account_id", "wallet"),
    )
    with op.batch_alter_table("utxos", schema=None) as batch_op:
        batch_op.create_index(
            "ix_utxos_side_height", ["account_id", "wallet", "block_height"], unique=False
        )
    bind = op.get_bind()
    bind.exec_driver_sql(balance_sql.BACKFILL)
    for statement in balance_sql.create_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for statement in balance_sql.drop_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)
    with op.batch_alter_table("utxos", schema=None) as batch_op:
        batch_op.drop_index("ix_utxos_side_height")
    op.drop_table(balance_sql.TABLE)
