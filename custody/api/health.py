"""`GET /api/v1/health`: up or not, for a load balancer; unauthenticated, so it says no more.

200 when the database answers and the hot HSM answers its RPC, 503 otherwise. Which
dependency failed is on the operator console's `/health`, behind the operator token.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cc_common.errors import CustodyError
from custody.extensions import db, hsm_provider

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


def _healthy() -> bool:
    try:
        db.reader.execute(text("SELECT 1"))
    except (SQLAlchemyError, CustodyError) as exc:  # DatabaseUnavailable: connect failed
        log.warning("health: database does not answer (%s)", type(exc).__name__)
        return False
    try:
        hsm_provider.client.health()
    except CustodyError as exc:
        log.warning("health: hot HSM does not answer (%s)", exc.message)
        return False
    return True


@bp.get("/health")
def health() -> tuple[Response, int]:
    ok = _healthy()
    return jsonify({"status": "ok" if ok else "unavailable"}), 200 if ok else 503
