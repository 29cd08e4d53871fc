"""The custody API's Flask app factory.

`create_app(config)` builds everything from one `Config`: the database engine (unless a
session factory is given), the hot HSM client (unless given; made on first use otherwise), the
extensions, one blueprint per resource under `/api/v1/open`, the OpenAPI document and its
explorer under `/api/v1`, and the errors blueprint that gives every error one JSON shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response, request
from flask.sessions import SessionInterface
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody.api import (
    addresses,
    errors,
    events,
    health,
    input_text,
    openapi,
    params,
    time,
    timing,
    txs,
    user,
)
from custody.db import (
    DB_WAIT_TIMEOUT,
    database_url,
    make_engine,
    make_session_factory,
    postgres_lock_timeout,
)
from custody.extensions import (
    CONFIG_KEY,
    SETTINGS_KEY,
    ApiSettings,
    account_cache,
    db,
    hsm_provider,
    limiter,
    send_intake_committer,
    token_cache,
)
from custody.hsm_client import HotHsm, HotHsmClient

API_PREFIX = "/api/v1/open"


def api_engine(url: str, **kw: Any) -> Engine:
    """The API's engine. On PostgreSQL without pre-ping: a ping is one more round trip per
    request; connections are recycled instead, and a dead one is replaced after one error.
    `kw` goes to `create_engine` on PostgreSQL (e.g. `isolation_level="AUTOCOMMIT"`)."""
    engine = make_engine(url)
    if engine.dialect.name != "postgresql":
        return engine
    real_url = engine.url
    engine.dispose()
    return create_engine(
        real_url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=False,
        pool_recycle=600,
        pool_timeout=DB_WAIT_TIMEOUT,
        connect_args=postgres_lock_timeout(),
        **kw,
    )


class _NoSessions(SessionInterface):
    """The API keeps no cookie session (every call carries its token): no cookie is parsed
    or signed on any request."""

    def open_session(self, app: Flask, request: Request) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


_MAX_SYNC = 1000


class _App(Flask):
    """Flask, asking once per function (not on every request, for every hook and view)
    whether it is a coroutine function that must be wrapped to run synchronously."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync) < _MAX_SYNC:  # views and hooks are few; never grows unbounded
                self._sync[func] = sync
        return sync


def _before_request() -> None:
    """Every request's first steps, in one hook with the request looked up once: its text
    checked (`input_text`), its timing and watch started (`timing`), its query parameters
    checked (`params`), in that order."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # the proxy's own
    input_text.refuse_unsafe_text(req)
    timing.start(req)
    params.check_query(req)


def create_app(
    config: Config,
    *,
    hsm: HotHsm | None = None,
    session_factory: sessionmaker[Session] | None = None,
) -> Flask:
    """Build the custody API app for `config`."""
    app = _App("custody")
    app.config[CONFIG_KEY] = config
    app.config[SETTINGS_KEY] = ApiSettings.from_config(config)
    app.config["SECRET_KEY"] = config.section("custody").str("secret_key", "")
    # Flask types `app.json` as the abstract JSONProvider; the default one has these options.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]

    reader_engine = None
    if session_factory is None:
        url = database_url(config)
        session_factory = make_session_factory(api_engine(url))
        if session_factory.kw["bind"].dialect.name == "postgresql":
            # Reads on their own pool of autocommit connections (see `Database.reader`).
            reader_engine = api_engine(url, isolation_level="AUTOCOMMIT")

    def make_hsm() -> HotHsm:
        # Shorter than the API's callers wait (the merchant site: 12 s), longer than the
        # hot HSM's link deadline once cut to it (the hot HSM is told how long we wait).
        return HotHsmClient.from_config(config, timeout_key="api_hsm_timeout", default=10.0)

    app.session_interface = _NoSessions()
    db.init_app(app, session_factory, reader_engine)
    account_cache.init_app(app)
    send_intake_committer.init_app(app, session_factory)
    hsm_provider.init_app(app, hsm, make_hsm)
    limiter.init_app(app)
    token_cache.init_app(app, config.section("custody").float("token_cache_seconds", 2.0))

    app.register_blueprint(errors.bp)
    app.register_blueprint(health.bp, url_prefix="/api/v1")
    for module in (time, user, addresses, txs, events):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
    app.register_blueprint(openapi.bp, url_prefix="/api/v1")
    timing.set_capacity(config.section("custody").int("threads", timing.DEFAULT_THREADS))
    app.before_request(_before_request)
    app.after_request(timing.finish)
    app.teardown_request(timing.teardown)
    return app
