"""The merchant site's Flask app factory and its one JSON error shape.

`create_app(config)` reads `[merchant_site]` once into `SiteSettings`, opens the site's own
database, and registers two blueprints: `api` (reference section 2, polled by the V-device)
and `merchant` (the merchant's own pages and actions). What the views share is in
`extensions` (so the blueprints never import this module).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from cc_common.config import Config
from examples.merchant_site import api, events, merchant
from examples.merchant_site.custody_client import CustodyClient
from examples.merchant_site.errors import InternalError, NotFound, SiteError
from examples.merchant_site.extensions import EXTENSION_KEY, Site, SiteSettings
from examples.merchant_site.models import make_session_factory

log = logging.getLogger(__name__)


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
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider option
    app.extensions[EXTENSION_KEY] = Site(
        config=config,
        settings=settings,
        sessions=make_session_factory(settings.database_url),
        custody=custody or CustodyClient(settings.custody_url),
    )

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

    app.register_blueprint(api.bp, url_prefix="/api/v1/open")
    app.register_blueprint(merchant.bp)
    app.register_blueprint(events.bp)
    return app
