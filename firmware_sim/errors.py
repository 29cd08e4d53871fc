"""Errors of the simulated hardware.

One base class for the package; each failure that crosses the control socket carries a stable
numeric code so the client can raise the same class on its side.
"""

from __future__ import annotations

from cc_common.errors import CustodyError


class FirmwareSimError(CustodyError):
    """Root of every error raised on purpose by `firmware_sim`."""

    code = 450


class StartupError(FirmwareSimError):
    """A part of the simulated hardware cannot start (port in use, link path taken...)."""

    code = 451


class ControlError(FirmwareSimError):
    """The control channel refused a request, or could not be reached."""

    code = 460


class ControlUnavailable(ControlError):
    """Nothing answers on the control socket: `firmware-sim serve` is not running."""

    code = 461


class BadRequest(ControlError):
    """A control request is malformed or names something that does not exist."""

    code = 462


class UnknownNumber(BadRequest):
    """A phone number that no modem, phone or gateway in the simulation owns."""

    code = 463


class InvalidNumber(FirmwareSimError):
    """A string that is not a phone number (E.164-like: optional '+', 3 to 20 digits)."""

    code = 470


class NotGsm7(FirmwareSimError):
    """Text that the GSM 7-bit default alphabet cannot carry."""

    code = 471


class NetworkDown(FirmwareSimError):
    """The sender's carrier has no service: the message cannot be submitted."""

    code = 472


CODES: dict[int, type[FirmwareSimError]] = {
    cls.code: cls
    for cls in (
        FirmwareSimError,
        StartupError,
        ControlError,
        ControlUnavailable,
        BadRequest,
        UnknownNumber,
        InvalidNumber,
        NotGsm7,
        NetworkDown,
    )
}


def error_for_code(code: int, message: str) -> FirmwareSimError:
    """Rebuild, on the client side, the exception the server raised."""
    return CODES.get(code, FirmwareSimError)(message, code=code)
