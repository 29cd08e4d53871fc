"""Errors of the merchant site, each with a stable code and an HTTP status.

The app answers every one of them as `{"code": n, "message": "..."}` (the custody API's
shape), so the V-device handles both services' errors the same way.
"""

from __future__ import annotations

from cc_common.errors import CustodyError


class SiteError(CustodyError):
    """Base of every error the site answers on purpose."""

    code = 2
    status = 400


class InternalError(SiteError):
    code = 1
    status = 500


class BadRequest(SiteError):
    """A field is missing or invalid, or names a batch the site does not hold."""

    code = 2
    status = 400


class Unauthorized(SiteError):
    """The shared token (V-device or admin) is missing or wrong."""

    code = 4
    status = 401


class Forbidden(SiteError):
    """Allowed only with a demo switch (raw `vtest_info`)."""

    code = 5
    status = 403


class NotFound(SiteError):
    code = 6
    status = 404


class Conflict(SiteError):
    """The record is finished (reported, or verified) and cannot change any more."""

    code = 7
    status = 409


class CustodyUnavailable(SiteError):
    """The custody API did not answer, refused, or answered something malformed."""

    code = 200
    status = 502
