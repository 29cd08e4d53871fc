"""The maintained balance: triggers on `utxos` that keep `account_balances` equal to the sums.

Each (account, side) row holds the satoshis of its unspent outputs, split into mined
(`confirmed`) and mempool (`unconfirmed`). Triggers on every insert, delete and relevant
update of `utxos` apply the row's change in the same database transaction as the UTXO
change, whoever writes it (watcher, send worker, a bulk load), so reading a balance never
sums an account's outputs. Reserving outputs for a send does not fire them.

`custody.balances.verify_balances` recomputes the sums and reports any row that differs.
The same DDL serves `metadata.create_all` (hooked in `custody.models`) and the migration.
"""

# ruff: noqa: S608  (every statement is built from this module's constants and the trigger row
# aliases OLD/NEW; nothing from outside reaches the SQL text)

from __future__ import annotations

TABLE = "account_balances"
_WATCHED = "spent_by, block_height, value, account_id, wallet"


def _share(r: str, mined: bool) -> str:
    """Row `r`'s satoshis in the mined or the mempool column (0 once spent)."""
    height = "IS NOT NULL" if mined else "IS NULL"
    return (
        f"(CASE WHEN {r}.spent_by IS NULL AND {r}.block_height {height} THEN {r}.value ELSE 0 END)"
    )


def _confirmed(r: str) -> str:
    return _share(r, True)


def _unconfirmed(r: str) -> str:
    return _share(r, False)


def _sqlite_add(r: str, sign: str) -> str:
    """SQLite statements adding (`+`) or removing (`-`) row `r`'s share of its balance row."""
    ensure = (
        f"INSERT OR IGNORE INTO {TABLE} (account_id, wallet, confirmed, unconfirmed) "
        f"VALUES ({r}.account_id, {r}.wallet, 0, 0);"
    )
    update = (
        f"UPDATE {TABLE} SET confirmed = confirmed {sign} {_confirmed(r)}, "
        f"unconfirmed = unconfirmed {sign} {_unconfirmed(r)} "
        f"WHERE account_id = {r}.account_id AND wallet = {r}.wallet;"
    )
    return f"{ensure} {update}" if sign == "+" else update


_SQLITE = (
    f"CREATE TRIGGER utxos_balance_insert AFTER INSERT ON utxos "
    f"BEGIN {_sqlite_add('NEW', '+')} END",
    f"CREATE TRIGGER utxos_balance_delete AFTER DELETE ON utxos "
    f"BEGIN {_sqlite_add('OLD', '-')} END",
    f"CREATE TRIGGER utxos_balance_update AFTER UPDATE OF {_WATCHED} ON utxos "
    f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '+')} END",
)

_POSTGRESQL = (
    f"""CREATE OR REPLACE FUNCTION utxos_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    UPDATE {TABLE} SET confirmed = confirmed - {_confirmed("OLD")},
        unconfirmed = unconfirmed - {_unconfirmed("OLD")}
      WHERE account_id = OLD.account_id AND wallet = OLD.wallet;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO {TABLE} AS b (account_id, wallet, confirmed, unconfirmed)
      VALUES (NEW.account_id, NEW.wallet, {_confirmed("NEW")}, {_unconfirmed("NEW")})
      ON CONFLICT (account_id, wallet) DO UPDATE
        SET confirmed = b.confirmed + EXCLUDED.confirmed,
            unconfirmed = b.unconfirmed + EXCLUDED.unconfirmed;
  END IF;
  RETURN NULL;
END $$""",
    f"CREATE TRIGGER utxos_balance AFTER INSERT OR DELETE OR UPDATE OF {_WATCHED} ON utxos "
    f"FOR EACH ROW EXECUTE FUNCTION utxos_balance()",
)

_DROP = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS utxos_balance_insert",
        "DROP TRIGGER IF EXISTS utxos_balance_delete",
        "DROP TRIGGER IF EXISTS utxos_balance_update",
    ),
    "postgresql": (
        "DROP TRIGGER IF EXISTS utxos_balance ON utxos",
        "DROP FUNCTION IF EXISTS utxos_balance()",
    ),
}


def create_statements(dialect: str) -> tuple[str, ...]:
    """The trigger DDL for a dialect name (`sqlite` or `postgresql`)."""
    if dialect == "sqlite":
        return _SQLITE
    if dialect == "postgresql":
        return _POSTGRESQL
    raise ValueError(f"no balance triggers for database dialect {dialect!r}")


def drop_statements(dialect: str) -> tuple[str, ...]:
    if dialect not in _DROP:
        raise ValueError(f"no balance triggers for database dialect {dialect!r}")
    return _DROP[dialect]


BACKFILL = f"""INSERT INTO {TABLE} (account_id, wallet, confirmed, unconfirmed)
SELECT account_id, wallet,
       COALESCE(SUM(CASE WHEN block_height IS NOT NULL THEN value ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN block_height IS NULL THEN value ELSE 0 END), 0)
FROM utxos WHERE spent_by IS NULL GROUP BY account_id, wallet"""
