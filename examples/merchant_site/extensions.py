"""What the merchant site's views share: its settings, the per-request session, token checks.

Created by `app.create_app` and kept in `app.extensions`; the blueprints import this module,
never the app factory, so the imports run one way.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config, load_config
from examples.merchant_site import store
from examples.merchant_site.custody_client import CustodyClient
from examples.merchant_site.errors import Unauthorized
from wallet_core.networks import Network

EXTENSION_KEY = "merchant_site"
VDEVICE_TOKEN_HEADER = "X-VDevice-Token"  # noqa: S105 (a header name)
ADMIN_TOKEN_HEADER = "X-Merchant-Token"  # noqa: S105
TOKEN_KEYS = ("cold_token", "hot_token")


@dataclass(frozen=True)
class SiteSettings:
    """`[merchant_site]`, read once. Secrets are kept out of `repr` so they never hit a log."""

    vtest_password: str = field(repr=False)
    database_url: str
    custody_url: str
    network: Network = Network.REGTEST
    # Empty = no check, as in the original demo site. When set, the V-device must send it.
    vdevice_token: str = field(default="", repr=False)
    # Empty = the merchant pages are open (bind to loopback, or put them behind your login).
    admin_token: str = field(default="", repr=False)
    # DEMO SWITCH: accept `raw_vtest_info` stored unencrypted, to play a hacked site.
    allow_raw_vtest: bool = False
    # Empty = no webhook receiver. The secret printed by `custody webhook add`.
    webhook_secret: str = field(default="", repr=False)
    webhook_tolerance: int = 300

    @classmethod
    def from_config(cls, config: Config) -> SiteSettings:
        s = config.section("merchant_site")
        custody_url = s.str("custody_url", "")
        if not custody_url and config.has_section("custody"):
            c = config.section("custody")
            custody_url = f"http://{c.str('host', '127.0.0.1')}:{c.int('port')}"
        network = "regtest"
        if config.has_section("deployment"):
            network = config.section("deployment").str("network", "regtest")
        return cls(
            vtest_password=s.secret("vtest_password"),
            database_url=s.str("database_url", f"sqlite:///{config.data_dir / 'merchant.db'}"),
            custody_url=custody_url,
            network=Network(network),
            vdevice_token=s.str("vdevice_token", ""),
            admin_token=s.str("admin_token", ""),
            allow_raw_vtest=s.bool("allow_raw_vtest", False),
            webhook_secret=s.str("webhook_secret", ""),
            webhook_tolerance=s.int("webhook_tolerance_seconds", 300),
        )


@dataclass
class Site:
    """Everything the views need, kept in `app.extensions` (nothing bound at import time)."""

    config: Config
    settings: SiteSettings
    sessions: sessionmaker[Session]
    custody: CustodyClient


def site() -> Site:
    return current_app.extensions[EXTENSION_KEY]


def db() -> Session:
    """The request's session, closed at teardown."""
    if "db" not in g:
        g.db = site().sessions()
    return g.db


@contextmanager
def transaction() -> Iterator[Session]:
    s = db()
    try:
        yield s
    except BaseException:
        s.rollback()
        raise
    s.commit()


def check_shared_token(expected: str, header: str) -> None:
    """Refuse the request unless `header` carries `expected` (constant time); no-op if unset."""
    if not expected:
        return
    given = request.headers.get(header, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(f"missing or wrong {header} header")


def custody_token(kind: str) -> str:
    """The `cold_token`/`hot_token` for custody: set by `set-tokens`, else in the config file.

    Read at request time, because the tokens exist only after the account was created, which
    is usually after the site started.
    """
    value = store.get_setting(db(), kind)
    if not value:
        fresh = load_config(site().config.data_dir, role="merchant-site")
        value = fresh.section("merchant_site").str(kind, "")
    return value
