"""chain_txs.inputs_json, outputs_json: the `GET /tx` document's arrays, stored by the writer

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 21:00:00.000000

Added NULL (a NULL row's arrays are built at read, as before), then filled for the rows
already recorded, so a page after the upgrade reads them stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from custody.api.tx_json import backfill_statement

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORED_JSON = sa.Text().with_variant(postgresql.JSON(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("chain_txs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inputs_json", STORED_JSON, nullable=True))
        batch_op.add_column(sa.Column("outputs_json", STORED_JSON, nullable=True))
    # the arrays as the application defines them (one definition: custody.api.tx_json)
    op.execute(backfill_statement(op.get_bind().dialect.name))


def downgrade() -> None:
    # ALTER TABLE, not a batch copy: SQLite (3.35+) drops an unindexed column in place, where
    # a copy of the table would have to drop chain_txs under its inputs' foreign keys
    for column in ("outputs_json", "inputs_json"):
        op.execute(f"ALTER TABLE chain_txs DROP COLUMN {column}")
