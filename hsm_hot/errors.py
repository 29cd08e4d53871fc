"""Errors of the hot HSM; codes are stable because they cross to custody over the RPC."""

from __future__ import annotations

from cc_common.errors import CustodyError


class HotHsmError(CustodyError):
    """Base of the hot HSM's refusals."""

    code = 900


class PolicyRefused(HotHsmError):
    """The hot HSM's own limits refuse this send (independent of custody's checks)."""

    code = 901


class RateLimited(PolicyRefused):
    code = 902


class UnknownAccount(HotHsmError):
    code = 903


class BadRequest(HotHsmError):
    code = 904


class NotPaired(HotHsmError):
    code = 905


class ColdUnreachable(HotHsmError):
    """The cold HSM did not answer over the serial link in time."""

    code = 906


class ColdRefused(HotHsmError):
    """The cold HSM refused; its code and reason are carried through unchanged."""

    code = 907


class Unauthorized(HotHsmError):
    code = 908


class ColdSignatureInvalid(HotHsmError):
    """The cold HSM answered with a signature that does not verify: nothing is signed here."""

    code = 909


class ProofInvalid(HotHsmError):
    """The cold HSM's provisioning proof does not verify against its pinned identity key."""

    code = 910


class FeeAboveLimit(PolicyRefused):
    """The send's fee (from its amounts) is above the hot HSM's per-send fee limit."""

    code = 920


class FeeRateAboveLimit(PolicyRefused):
    """The send's fee rate is above the hot HSM's limit."""

    code = 921


class DailyFeeAboveLimit(PolicyRefused):
    """The fees signed for the account in 24 hours would pass the hot HSM's daily limit."""

    code = 922


class RecoveryPsbtRefused(HotHsmError):
    """A recovery PSBT spends something that is not the account's hot wallet, or is malformed."""

    code = 980


class NotConfirmed(HotHsmError):
    """The operator did not confirm a recovery signature at the console."""

    code = 981
