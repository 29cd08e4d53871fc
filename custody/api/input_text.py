"""Every request's text is checked before any view runs: no control or bidi character.

Form fields, JSON body strings, query arguments and path parts are refused with a 400 naming
the field and the character, so nothing such a value carries can reach the database, an HSM,
an alert or a log.
"""

from __future__ import annotations

from flask import Blueprint, request

from cc_common.text import UnsafeText, check_text, check_values
from custody.errors import BadRequest

bp = Blueprint("input_text", __name__)


@bp.before_app_request
def refuse_unsafe_text() -> None:
    try:
        for where, values in (("query argument", request.args), ("form field", request.form)):
            for key, value in values.items(multi=True):
                check_text(key, f"{where} name")
                check_text(value, f"{where} {key!r}")
        for key, value in (request.view_args or {}).items():
            if isinstance(value, str):
                check_text(value, f"path part {key!r}")
        if request.is_json:
            check_values(request.get_json(silent=True), "JSON body")
    except UnsafeText as exc:
        raise BadRequest(exc.message) from None
