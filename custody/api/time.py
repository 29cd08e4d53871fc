"""`GET /time`: the server's clock (UTC), so a client can check its own."""

from __future__ import annotations

from flask import Blueprint

from custody.api import iso
from custody.auth import any_token
from custody.models import utcnow

bp = Blueprint("time", __name__)


@bp.get("/time")
@any_token
def get_time() -> dict[str, object]:
    return {"time": iso(utcnow())}
