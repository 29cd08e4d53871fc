"""Refusals of the cold HSM, one class per reason, with stable codes (700-749).

They cross the serial link (the link server sends `code` and `message` of any `CustodyError`),
then the hot HSM's RPC, to custody and the operator; so a code is never reused or renumbered.
"""

from __future__ import annotations

from enum import IntEnum

from cc_common.errors import CustodyError


class ColdErrorCode(IntEnum):
    """Stable numeric refusal codes of the cold HSM."""

    COLD = 700
    BAD_REQUEST = 701
    UNKNOWN_ACCOUNT = 702
    ACCOUNT_FROZEN = 703
    UNKNOWN_CHANNEL = 704
    CHANNEL_EXPIRED = 705
    FORGED_VC_CODE = 706
    USER_TX_NO_REUSED = 707
    OUTPUT_MISMATCH = 708
    EXTRA_OUTPUT = 709
    CHANGE_NOT_DERIVABLE = 710
    FOREIGN_INPUT = 711
    FEE_ABOVE_POLICY = 712
    ACCOUNT_EXISTS = 713
    WRONG_NETWORK = 714
    BAD_IDENTITY_SIGNATURE = 715
    STATE_DAMAGED = 716
    NOT_PAIRED = 717
    SEND_CLOSED = 740


class ColdHsmError(CustodyError):
    """Base of every refusal of the cold HSM."""

    code = ColdErrorCode.COLD


class BadRequest(ColdHsmError):
    """A request field is missing, of the wrong type or malformed."""

    code = ColdErrorCode.BAD_REQUEST


class UnknownAccount(ColdHsmError):
    code = ColdErrorCode.UNKNOWN_ACCOUNT


class AccountFrozen(ColdHsmError):
    """Frozen accounts sign nothing until `hsm-cold unfreeze` at the cold console."""

    code = ColdErrorCode.ACCOUNT_FROZEN


class UnknownChannel(ColdHsmError):
    code = ColdErrorCode.UNKNOWN_CHANNEL


class ChannelExpired(ColdHsmError):
    code = ColdErrorCode.CHANNEL_EXPIRED


class ForgedVcCode(ColdHsmError):
    """The V-device signature does not recover to the channel key; the account is frozen."""

    code = ColdErrorCode.FORGED_VC_CODE


class UserTxNoReused(ColdHsmError):
    code = ColdErrorCode.USER_TX_NO_REUSED


class OutputMismatch(ColdHsmError):
    """An output differs from the signed `outs` (address or satoshi), or one is missing."""

    code = ColdErrorCode.OUTPUT_MISMATCH


class ExtraOutput(ColdHsmError):
    """The transaction pays more outputs than the signed `outs` plus one change."""

    code = ColdErrorCode.EXTRA_OUTPUT


class ChangeNotDerivable(ColdHsmError):
    """The declared change output is not the hot wallet's own change script."""

    code = ColdErrorCode.CHANGE_NOT_DERIVABLE


class ForeignInput(ColdHsmError):
    """An input does not name a key path of the account's wallet."""

    code = ColdErrorCode.FOREIGN_INPUT


class FeeAbovePolicy(ColdHsmError):
    code = ColdErrorCode.FEE_ABOVE_POLICY


class AccountExists(ColdHsmError):
    """A different provisioning request for an account that already exists."""

    code = ColdErrorCode.ACCOUNT_EXISTS


class WrongNetwork(ColdHsmError):
    code = ColdErrorCode.WRONG_NETWORK


class BadIdentitySignature(ColdHsmError):
    """A channel registration not signed by the account's pinned V-device identity key."""

    code = ColdErrorCode.BAD_IDENTITY_SIGNATURE


class StateDamaged(ColdHsmError):
    """A sealed seed does not open with its account's facts: the state was altered."""

    code = ColdErrorCode.STATE_DAMAGED


class NotPaired(ColdHsmError):
    """No link key (or no identity key): `hsm-cold init` was not run."""

    code = ColdErrorCode.NOT_PAIRED


class SendClosed(ColdHsmError):
    """This `user_tx_no` was closed by a "refused" statement: it is never signed again, so a
    V-device that reported the send failed on that statement can never be contradicted."""

    code = ColdErrorCode.SEND_CLOSED
