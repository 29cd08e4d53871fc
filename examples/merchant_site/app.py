"""The merchant site's Flask app factory, its settings, and its one JSON error shape.

`create_app(config)` reads `[merchant_site]` once into `SiteSettings`, opens the site's own
database, and registers two blueprints: `api` (reference section 2, polled by the V-device)
and `merchant` (the merchant's own pages and actions).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from cc_common.config import Config, load_config
from cc_common.text import UnsafeText, check_text
from examples.merchant_site import store
from examples.merchant_site.custody_client import CustodyClient
from examples.merchant_site.errors import (
    BadRequest,
    InternalError,
    NotFound,
    SiteError,
    Unauthorized,
)
from examples.merchant_site.models import make_session_factory
from wallet_core.networks import Network

log = logging.getLogger(__name__)

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
        )


@dataclass
class Site:
    """Everything the views need, kept in `app.extensions` (nothing bound at import time)."""

    config: Config
    settings: SiteSettings
    sessions: sessionmaker[Session]
    custody: CustodyClient


def site() -> Site:
    return current_app.extensions["merchant_site"]  # type: ignore[no-any-return]


def db() -> Session:
    """The request's session, closed at teardown."""
    if "db" not in g:
        g.db = site().sessions()
    return g.db  # type: ignore[no-any-return]


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
        fresh = load_config(site().config.data_dir)
        value = fresh.section("merchant_site").str(kind, "")
    return value


def refuse_unsafe_text() -> None:
    """No control or bidi character in any field, query argument or JSON string: 400."""
    body = request.get_json(silent=True) if request.is_json else None
    fields = [*request.args.items(multi=True), *request.form.items(multi=True)]
    if isinstance(body, dict):
        fields += [(str(k), v) for k, v in body.items() if isinstance(v, str)]
    try:
        for key, value in fields:
            check_text(str(key), "field name")
            check_text(value, f"field {key!r}")
    except UnsafeText as exc:
        raise BadRequest(exc.message) from None


def _error(err: SiteError) -> tuple[Response, int]:
    return jsonify({"code": err.code, "message": err.message}), err.status


def create_app(
    config: Config,
    *,
    settings: SiteSettings | None = None,
    custody: CustodyClient | None = None,
) -> Flask:
    settings = settings or SiteSettings.from_config(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["merchant_site"] = Site(
        config=config,
        settings=settings,
        sessions=make_session_factory(settings.database_url),
        custody=custody or CustodyClient(settings.custody_url),
    )

    app.before_request(refuse_unsafe_text)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        s = g.pop("db", None)
        if s is not None:
            s.close()

    @app.errorhandler(SiteError)
    def _site_error(err: SiteError) -> Any:
        return _error(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Any:
        if err.code == 404:
            return _error(NotFound("no such page"))
        resp, _ = _error(SiteError(err.description or "bad request", code=2))
        return resp, err.code or 500

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Any:
        log.exception("unexpected error while serving %s %s", request.method, request.path)
        return _error(InternalError("internal error"))

    from examples.merchant_site import api, merchant  # noqa: PLC0415

    app.register_blueprint(api.bp, url_prefix="/api/v1/open")
    app.register_blueprint(merchant.bp)
    return app
