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
    # disaster recovery (docs/recovery.md)
    WRONG_SHARE = 740
    TOO_FEW_SHARES = 741
    FOREIGN_BACKUP_KEY = 742
    BACKUP_FILE_ALTERED = 743
    BACKUP_FILE_INVALID = 744
    BACKUP_MISSING = 745
    RESTORE_TARGET_IN_USE = 746
    RECOVERY_PSBT_REFUSED = 747
    NOT_CONFIRMED = 748
    DRILL_MODE_OFF = 749


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


class WrongShare(ColdHsmError):
    """A typed share is not a valid SLIP-39 share, or the shares do not belong together."""

    code = ColdErrorCode.WRONG_SHARE


class TooFewShares(ColdHsmError):
    """Fewer distinct shares than the backup key's threshold."""

    code = ColdErrorCode.TOO_FEW_SHARES


class ForeignBackupKey(ColdHsmError):
    """The shares rebuild a backup key, but not the one the backup files were written under."""

    code = ColdErrorCode.FOREIGN_BACKUP_KEY


class BackupFileAltered(ColdHsmError):
    """A backup file's signature or authenticated encryption does not check out."""

    code = ColdErrorCode.BACKUP_FILE_ALTERED


class BackupFileInvalid(ColdHsmError):
    """Not a backup file, or a set of files that does not make one cold HSM."""

    code = ColdErrorCode.BACKUP_FILE_INVALID


class BackupMissing(ColdHsmError):
    """No backup key on this cold HSM: provisioning would make seeds nobody can restore."""

    code = ColdErrorCode.BACKUP_MISSING


class RestoreTargetInUse(ColdHsmError):
    """A restore writes only onto a fresh token and an empty cold state."""

    code = ColdErrorCode.RESTORE_TARGET_IN_USE


class RecoveryPsbtRefused(ColdHsmError):
    """A recovery PSBT spends something that is not the account's wallet, or is malformed."""

    code = ColdErrorCode.RECOVERY_PSBT_REFUSED


class NotConfirmed(ColdHsmError):
    """The officer at the console did not confirm (or re-typed the wrong words)."""

    code = ColdErrorCode.NOT_CONFIRMED


class DrillModeOff(ColdHsmError):
    """Shares from files are accepted only with `[hsm_cold] backup_drill_dir` configured."""

    code = ColdErrorCode.DRILL_MODE_OFF
