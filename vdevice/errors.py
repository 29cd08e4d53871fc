"""Errors of the V-device, each with a stable code (860-899, see `cc_errors.registry`)."""

from __future__ import annotations

from cc_common.errors import CustodyError


class VDeviceError(CustodyError):
    """Base of every error the V-device raises on purpose."""

    code = 860


class NotInitialised(VDeviceError):
    """No identity key yet: `vdevice init` was never run on this state directory."""

    code = 861


class NotProvisioned(VDeviceError):
    """No provisioning bundle loaded: `vdevice provision` was never run."""

    code = 862


class ProvisioningError(VDeviceError):
    """The provisioning bundle is malformed or conflicts with the stored one."""

    code = 863


class RemoteError(VDeviceError):
    """The merchant site or the custody API could not be reached or answered nonsense.

    Transient: the loop retries later. `status` is the HTTP status when there was one.
    """

    code = 864

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteRefused(VDeviceError):
    """The other side answered a definite 4xx error (`remote_code` is its JSON `code`)."""

    code = 865

    def __init__(self, message: str, *, status: int, remote_code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.remote_code = remote_code


class FingerprintMismatch(VDeviceError):
    """The bundle's cold identity is not the one whose fingerprint was typed in."""

    code = 866
