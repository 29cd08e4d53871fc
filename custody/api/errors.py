"""The errors blueprint: every error leaves the API as `{"code": n, "message": "..."}`.

Domain errors (`ApiError`) keep their code and status; HTTP errors of routing (404, 405) get
ours; anything else is logged with its traceback and answered with a bare 500, so no stack
trace, SQL statement or driver message ever reaches a client.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from custody.db import SQLITE_BUSY_TIMEOUT, is_busy
from custody.errors import (
    ApiError,
    BadRequest,
    DatabaseBusy,
    InternalError,
    MethodNotAllowed,
    NotFound,
    RateLimited,
)

log = logging.getLogger(__name__)

bp = Blueprint("errors", __name__)


def error_response(err: ApiError) -> tuple[Response, int]:
    resp = jsonify({"code": err.code, "message": err.message})
    if isinstance(err, RateLimited):
        resp.headers["Retry-After"] = str(err.retry_after)
    return resp, err.status


@bp.app_errorhandler(ApiError)
def handle_api_error(err: ApiError) -> tuple[Response, int]:
    return error_response(err)


@bp.app_errorhandler(HTTPException)
def handle_http_error(err: HTTPException) -> tuple[Response, int]:
    if err.code == 404:
        return error_response(NotFound("no such endpoint"))
    if err.code == 405:
        return error_response(MethodNotAllowed("method not allowed on this endpoint"))
    if err.code is not None and err.code < 500:
        return error_response(BadRequest(err.description or "bad request", status=err.code))
    log.error("HTTP error %s", err.code)
    return error_response(InternalError("internal error"))


@bp.app_errorhandler(Exception)
def handle_unexpected(err: Exception) -> tuple[Response, int]:
    if is_busy(err):
        log.warning(
            "%s %s: database busy: a lock or connection was not free within %.0fs; "
            "nothing written (%s)",
            request.method,
            request.path,
            SQLITE_BUSY_TIMEOUT,
            type(err).__name__,
        )
        return error_response(
            DatabaseBusy(
                f"database busy (a lock or connection was not free within "
                f"{SQLITE_BUSY_TIMEOUT:.0f}s); "
                "nothing was written, retry later"
            )
        )
    log.exception("unexpected error while serving a request")
    return error_response(InternalError("internal error"))
