"""utxos: index of the free coins by value, for coin selection and consolidation

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:30:00.000000

Coin selection reads the largest coins and those either side of the payment, consolidation
the smallest: index ranges on (account, side, value) over the coins neither spent nor
reserved, so neither reads all of an account's coins.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

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


def downgrade() -> None:
    op.drop_index("ix_utxos_spendable", table_name="utxos")
