"""Errors of the serial link between the HSMs, one class per failure, with stable codes.

`serial`/`OSError` exceptions never leave `port.py`; everything above it raises these. The
codes (300-349, see `cc_errors.registry`) are stable because a `LinkRemoteError` carries a code
across the link.
"""

from __future__ import annotations

from enum import IntEnum

from cc_common.errors import CustodyError


class LinkErrorCode(IntEnum):
    """Stable numeric codes of link failures (also sent on the wire for remote failures)."""

    LINK = 300
    TIMEOUT = 301
    CLOSED = 302
    PORT = 303
    TOO_LARGE = 304
    ENCODING = 305
    AUTH_REFUSED = 306
    UNKNOWN_COMMAND = 307
    HANDLER_FAILED = 308
    BUSY = 309


class LinkError(CustodyError):
    """Root of every link failure."""

    code = LinkErrorCode.LINK


class LinkTimeout(LinkError):
    """A request got no answer before its deadline (line cut, peer down or too slow)."""

    code = LinkErrorCode.TIMEOUT


class LinkClosed(LinkError):
    """The link was closed while a request was waiting or being sent."""

    code = LinkErrorCode.CLOSED


class LinkPortError(LinkError):
    """The serial port cannot be opened (bad URL or device path)."""

    code = LinkErrorCode.PORT


class LinkTooLarge(LinkError):
    """A message does not fit in one frame (`LinkConfig.max_frame`)."""

    code = LinkErrorCode.TOO_LARGE


class LinkEncodingError(LinkError):
    """A value cannot be encoded by the link codec, or received bytes do not decode."""

    code = LinkErrorCode.ENCODING


class LinkAuthError(LinkError):
    """The peer refused our message as unauthenticated (bad MAC: the link keys differ)."""

    code = LinkErrorCode.AUTH_REFUSED


class LinkBusy(LinkError):
    """Too many frames are queued for the line; the caller should back off."""

    code = LinkErrorCode.BUSY


class LinkRemoteError(LinkError):
    """The peer's handler refused the command; `code`/`message` are the peer's own."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code=code)
