"""Errors of the hot HSM; codes are stable because they cross to custody over the RPC."""

from __future__ import annotations

from cc_common.errors import CustodyError


class HotHsmError(CustodyError):
    """Base of the hot HSM's refusals."""

    code = 500


class PolicyRefused(HotHsmError):
    """The hot HSM's own limits refuse this send (independent of custody's checks)."""

    code = 501


class RateLimited(PolicyRefused):
    code = 502


class UnknownAccount(HotHsmError):
    code = 503


class BadRequest(HotHsmError):
    code = 504


class NotPaired(HotHsmError):
    code = 505


class ColdUnreachable(HotHsmError):
    """The cold HSM did not answer over the serial link in time."""

    code = 506


class ColdRefused(HotHsmError):
    """The cold HSM refused; its code and reason are carried through unchanged."""

    code = 507


class Unauthorized(HotHsmError):
    code = 508
