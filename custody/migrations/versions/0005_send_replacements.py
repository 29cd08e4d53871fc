"""send replacements: the transactions of fee-bumped sends

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_replacements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("send_id", sa.Integer(), nullable=False),
        sa.Column("txid", sa.String(length=64), nullable=False),
        sa.Column("psbt", sa.Text(), nullable=False),
        sa.Column("tx_hex", sa.Text(), nullable=True),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("change_value", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "BUILT",
                "SIGNED",
                "CURRENT",
                "REPLACED",
                "REJECTED",
                name="replacementstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("at_height", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["send_id"], ["sends.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("send_replacements", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_send_replacements_send_id"), ["send_id"])
        batch_op.create_index(batch_op.f("ix_send_replacements_txid"), ["txid"])


def downgrade() -> None:
    with op.batch_alter_table("send_replacements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_send_replacements_txid"))
        batch_op.drop_index(batch_op.f("ix_send_replacements_send_id"))
    op.drop_table("send_replacements")
