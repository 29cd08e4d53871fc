"""The maintained balance: triggers on `utxos` that keep `account_balances` equal to the sums.

Each (account, side) row holds the satoshis of its unspent outputs, split into mined
(`confirmed`) and mempool (`unconfirmed`). Triggers on every insert, delete and update of
`utxos` apply the change in the same database transaction as the UTXO change, whoever
writes it (watcher, send worker, a bulk load), so reading a balance never sums an
account's outputs. Reserving outputs for a send leaves the balance rows untouched (no lock
on them). SQLite runs them per row; PostgreSQL per statement (see `_POSTGRESQL`).

Every change also marks the row `unjournalled`: `custody.balance_journal` records the new
totals in the hash-chained journal before the transaction commits and clears the mark, so
`custody.balances.verify_balances` can check each row against both the sums of its outputs
and the journal's newest record of it.
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
        f"INSERT OR IGNORE INTO {TABLE} (account_id, wallet, confirmed, unconfirmed, "
        f"unjournalled) VALUES ({r}.account_id, {r}.wallet, 0, 0, 0);"
    )
    update = (
        f"UPDATE {TABLE} SET confirmed = confirmed {sign} {_confirmed(r)}, "
        f"unconfirmed = unconfirmed {sign} {_unconfirmed(r)}, "
        f"unjournalled = unjournalled OR ({_confirmed(r)} + {_unconfirmed(r)} <> 0) "
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


def _pg_rows(table: str, sign: str) -> str:
    """A transition table's rows as (account_id, wallet, mined, mempool) deltas."""
    return (
        f"SELECT r.account_id, r.wallet, {sign}{_confirmed('r')} AS c, "
        f"{sign}{_unconfirmed('r')} AS u FROM {table} r"
    )


def _pg_apply(rows: str) -> str:
    """Add the per-side sums of `rows` to the balance rows, skipping zero changes (a
    reservation) and locking the rows in one order (no deadlock between two statements)."""
    return (
        f"INSERT INTO {TABLE} AS b (account_id, wallet, confirmed, unconfirmed, unjournalled) "
        f"SELECT account_id, wallet, SUM(c), SUM(u), true FROM ({rows}) d "
        "GROUP BY account_id, wallet HAVING SUM(c) <> 0 OR SUM(u) <> 0 "
        "ORDER BY account_id, wallet "
        "ON CONFLICT (account_id, wallet) DO UPDATE "
        "SET confirmed = b.confirmed + EXCLUDED.confirmed, "
        "unconfirmed = b.unconfirmed + EXCLUDED.unconfirmed, unjournalled = true;"
    )


# Statement-level with transition tables: a bulk load or a block's updates change each
# balance row once per statement. Row-level triggers updated the same row once per UTXO,
# and PostgreSQL's row versions made a 200 000-row COPY into one account quadratic.
_POSTGRESQL = (
    f"""CREATE OR REPLACE FUNCTION utxos_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_apply(_pg_rows("new_rows", "+"))}
  ELSIF TG_OP = 'DELETE' THEN
    {_pg_apply(_pg_rows("old_rows", "-"))}
  ELSE
    {_pg_apply(_pg_rows("new_rows", "+") + " UNION ALL " + _pg_rows("old_rows", "-"))}
  END IF;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER utxos_balance_insert AFTER INSERT ON utxos REFERENCING NEW TABLE AS "
    "new_rows FOR EACH STATEMENT EXECUTE FUNCTION utxos_balance()",
    "CREATE TRIGGER utxos_balance_delete AFTER DELETE ON utxos REFERENCING OLD TABLE AS "
    "old_rows FOR EACH STATEMENT EXECUTE FUNCTION utxos_balance()",
    # transition tables allow no column list: every update runs it, and a reservation's
    # zero change is skipped by the HAVING
    "CREATE TRIGGER utxos_balance_update AFTER UPDATE ON utxos REFERENCING OLD TABLE AS "
    "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION utxos_balance()",
)

_DROP = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS utxos_balance_insert",
        "DROP TRIGGER IF EXISTS utxos_balance_delete",
        "DROP TRIGGER IF EXISTS utxos_balance_update",
    ),
    "postgresql": (
        "DROP TRIGGER IF EXISTS utxos_balance_insert ON utxos",
        "DROP TRIGGER IF EXISTS utxos_balance_delete ON utxos",
        "DROP TRIGGER IF EXISTS utxos_balance_update ON utxos",
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


# (run by migration 0006, before the `unjournalled` column of 0007 existed)
BACKFILL = f"""INSERT INTO {TABLE} (account_id, wallet, confirmed, unconfirmed)
SELECT account_id, wallet,
       COALESCE(SUM(CASE WHEN block_height IS NOT NULL THEN value ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN block_height IS NULL THEN value ELSE 0 END), 0)
FROM utxos WHERE spent_by IS NULL GROUP BY account_id, wallet"""
