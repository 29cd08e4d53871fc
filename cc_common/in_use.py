"""What of a deployment is in use: `custody init --force` refuses to touch any of it.

Rewriting the configuration of a used deployment replaces every PIN and secret while the
tokens and databases keep the old ones: the next start burns PIN tries and orphans data.
Each finding says what was found where, so the operator knows what to move or change
explicitly (`hsm-hot change-pin`, `hsm-cold change-pin`).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, literal, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cc_common.config import Config
from cc_common.errors import ConfigError

TOKENS = (("hsm_hot", "hot HSM"), ("hsm_cold", "cold HSM"))
STATE_DIRS = (
    ("hsm_hot", "state_dir", "hot HSM state"),
    ("hsm_cold", "state_dir", "cold HSM state"),
)
DATABASES = (("custody", "custody database"), ("merchant_site", "merchant site database"))


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _tables_with_rows(url: str) -> list[str]:
    """Tables (but the migration marker) holding at least one row; a missing SQLite file
    is no data (and is not created by looking)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.exists() or path.stat().st_size == 0:
            return []
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(url)
    else:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as con:
            names = [n for n in inspect(con).get_table_names() if n != "alembic_version"]
            return [
                n for n in names if con.execute(select(literal(1)).select_from(table(n))).first()
            ]
    finally:
        engine.dispose()


def find_in_use(config: Config) -> list[str]:
    """Everything of `config`'s deployment that holds state (empty: safe to re-initialize)."""
    found: list[str] = []
    for section, what in TOKENS:
        if config.has_section(section) and config.section(section).has("token_dir"):
            token_dir = config.section(section).path("token_dir")
            if _non_empty(token_dir):
                found.append(f"the {what} token is initialized ({token_dir})")
    for section, key, what in STATE_DIRS:
        if config.has_section(section) and config.section(section).has(key):
            state = config.section(section).path(key)
            if _non_empty(state):
                found.append(f"{what} exists ({state})")
    for section, what in DATABASES:
        if not (config.has_section(section) and config.section(section).has("database_url")):
            continue
        url = config.section(section).str("database_url")
        try:
            tables = _tables_with_rows(url)
        except SQLAlchemyError as exc:
            shown = make_url(url).render_as_string(hide_password=True)
            found.append(f"the {what} could not be checked ({shown}: {type(exc).__name__})")
            continue
        if tables:
            shown = make_url(url).render_as_string(hide_password=True)
            found.append(f"the {what} has data ({shown}: {', '.join(sorted(tables)[:6])})")
    return found


def refuse_if_in_use(config: Config) -> None:
    found = find_in_use(config)
    if found:
        raise ConfigError(
            f"refusing to overwrite {config.path}: the deployment is in use: "
            + "; ".join(found)
            + ". Its PINs and secrets are still needed; change an HSM's PINs with "
            "`hsm-hot change-pin` / `hsm-cold change-pin`, or init a new directory"
        )
