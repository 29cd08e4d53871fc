"""Every request's text is checked before any view runs: no control or bidi character.

Form fields, JSON body strings, query arguments and path parts are refused with a 400 naming
the field and the character, so nothing such a value carries can reach the database, an HSM,
an alert or a log.
"""

from __future__ import annotations

from flask import Request, request

from cc_common.text import UnsafeText, check_text, check_values
from custody.errors import BadRequest


def refuse_unsafe_text(req: Request | None = None) -> None:
    """`before_request` (or called by one with the request at hand, `req`)."""
    if req is None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # the proxy's own
    try:
        sources = [("query argument", req.args)]
        # a body is parsed as a form only when it says its type (`want_form_data_parsed`):
        # otherwise `form` is empty, and not made (with the stream it wraps) just to be read
        if req.want_form_data_parsed:
            sources.append(("form field", req.form))
        for where, values in sources:
            for key, value in values.items(multi=True):
                check_text(key, f"{where} name")
                check_text(value, f"{where} {key!r}")
        for key, value in (req.view_args or {}).items():
            if isinstance(value, str):
                check_text(value, f"path part {key!r}")
        if req.is_json:
            check_values(req.get_json(silent=True), "JSON body")
    except UnsafeText as exc:
        raise BadRequest(exc.message) from None
