"""key origins: the master fingerprints of the receiving, cosigner and recovery keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00.000000

The cosigner and recovery fingerprints of existing accounts are taken from their stored hot
descriptor (where custody used to read them at every send), so their PSBT key origins stay
the same. The receiving fingerprint was never returned before: it stays '' (no origin).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("receiving_fingerprint", "cosigner_fingerprint", "recovery_fingerprint")


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.add_column(
                sa.Column(name, sa.String(length=8), server_default="", nullable=False)
            )
    _backfill_from_hot_descriptors()


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)


def _backfill_from_hot_descriptors() -> None:
    """Set cosigner/recovery fingerprints from the origins written in each hot descriptor."""
    from wallet_core.bip32 import ExtendedKey, parse_xpub  # noqa: PLC0415 (loaded only when this migration runs)
    from wallet_core.descriptors import DescriptorKey, parse_descriptor  # noqa: PLC0415 (loaded only when this migration runs)
    from wallet_core.errors import WalletError  # noqa: PLC0415 (loaded only when this migration runs)

    def ident(key: ExtendedKey) -> tuple[bytes, bytes]:
        return key.public_key, key.chain_code

    accounts = sa.table(
        "accounts",
        sa.column("id", sa.Integer),
        sa.column("cold_cosigner_xpub", sa.Text),
        sa.column("recovery_xpub", sa.Text),
        sa.column("hot_descriptor", sa.Text),
        sa.column("cosigner_fingerprint", sa.String),
        sa.column("recovery_fingerprint", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            accounts.c.id,
            accounts.c.cold_cosigner_xpub,
            accounts.c.recovery_xpub,
            accounts.c.hot_descriptor,
        )
    ).all()
    for row in rows:
        try:
            origins = {
                ident(k.xpub): k.fingerprint.hex()
                for k in parse_descriptor(row.hot_descriptor or "").keys
                if isinstance(k, DescriptorKey)
            }
            values = {
                "cosigner_fingerprint": origins.get(ident(parse_xpub(row.cold_cosigner_xpub)), ""),
                "recovery_fingerprint": origins.get(ident(parse_xpub(row.recovery_xpub)), ""),
            }
        except WalletError:
            continue  # unreadable: no origin known, as before
        conn.execute(accounts.update().where(accounts.c.id == row.id).values(**values))
