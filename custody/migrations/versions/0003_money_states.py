"""money states: waiting sends, deposit states with their history, dust outputs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:00:00.000000

Existing transactions start in the state their status implies (mempool: seen, confirmed:
confirmed, removed: dropped); the watcher moves confirmed ones to final at the next block.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = ("SEEN", "CONFIRMED", "FINAL", "REPLACED", "CONFLICTED", "REORGED", "DROPPED")


def upgrade() -> None:
    with op.batch_alter_table("sends", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state_reason", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("broadcast_height", sa.Integer(), nullable=True))
    with op.batch_alter_table("utxos", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_dust", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    state = sa.Enum(*_STATES, name="depositstate", native_enum=False, length=16)
    with op.batch_alter_table("chain_txs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", state, server_default="SEEN", nullable=False))
        batch_op.add_column(
            sa.Column("state_at", sa.DateTime(), server_default=sa.func.now(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("has_dust", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("chain_txs", schema=None) as batch_op:
        batch_op.create_index("ix_chain_txs_state_height", ["state", "block_height"], unique=False)
    txs = sa.table("chain_txs", sa.column("status", sa.String), sa.column("state", sa.String))
    for status, new in (("CONFIRMED", "CONFIRMED"), ("REMOVED", "DROPPED")):
        op.execute(txs.update().where(txs.c.status == status).values(state=new))
    op.create_table(
        "tx_state_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_tx_id", sa.Integer(), nullable=False),
        sa.Column("state", state, nullable=False),
        sa.Column("confirmations", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["chain_tx_id"], ["chain_txs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tx_state_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tx_state_changes_chain_tx_id"), ["chain_tx_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tx_state_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tx_state_changes_chain_tx_id"))
    op.drop_table("tx_state_changes")
    with op.batch_alter_table("chain_txs", schema=None) as batch_op:
        batch_op.drop_index("ix_chain_txs_state_height")
        batch_op.drop_column("has_dust")
        batch_op.drop_column("state_at")
        batch_op.drop_column("state")
    with op.batch_alter_table("utxos", schema=None) as batch_op:
        batch_op.drop_column("is_dust")
    with op.batch_alter_table("sends", schema=None) as batch_op:
        batch_op.drop_column("broadcast_height")
        batch_op.drop_column("state_reason")
