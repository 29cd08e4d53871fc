"""Refusals of the cold HSM, one class per reason, with stable codes (700-799).

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
    PREV_TX_REQUIRED = 730
    AMOUNT_MISMATCH = 731
    BAD_PREV_TX = 732
    FEE_RATE_ABOVE_POLICY = 733
    DAILY_FEE_ABOVE_POLICY = 734
    BAD_TX_VERSION = 735
    BAD_LOCKTIME = 736
    BAD_SEQUENCE = 737
    CHANGE_BEYOND_GAP = 738
    ALREADY_SWEPT = 739
    BAD_SETTLEMENT_DESCRIPTOR = 740
    # The customer's spending policy and the out-of-band confirmation (hsm_cold/policy.py).
    ACCOUNT_PENDING = 750
    POLICY_REFUSED = 751
    APPROVAL_MISSING = 752
    POLICY_CHANGE_REFUSED = 753
    # disaster recovery (docs/recovery.md)
    WRONG_SHARE = 780
    TOO_FEW_SHARES = 781
    FOREIGN_BACKUP_KEY = 782
    BACKUP_FILE_ALTERED = 783
    BACKUP_FILE_INVALID = 784
    BACKUP_MISSING = 785
    RESTORE_TARGET_IN_USE = 786
    RECOVERY_PSBT_REFUSED = 787
    NOT_CONFIRMED = 788
    DRILL_MODE_OFF = 789


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


class PrevTxRequired(ColdHsmError):
    """An input spends an outpoint whose amount the cold HSM has not verified yet: send the
    previous transaction (the request changed nothing; the same request with it will do)."""

    code = ColdErrorCode.PREV_TX_REQUIRED


class AmountMismatch(ColdHsmError):
    """A stated input amount or script differs from the verified one; the account is frozen."""

    code = ColdErrorCode.AMOUNT_MISMATCH


class BadPrevTx(ColdHsmError):
    """A previous transaction that does not parse or does not hash to the txid it is sent for."""

    code = ColdErrorCode.BAD_PREV_TX


class FeeRateAbovePolicy(ColdHsmError):
    code = ColdErrorCode.FEE_RATE_ABOVE_POLICY


class DailyFeeAbovePolicy(ColdHsmError):
    """The fees signed for the account in the last 24 hours would pass the daily ceiling."""

    code = ColdErrorCode.DAILY_FEE_ABOVE_POLICY


class BadTxVersion(ColdHsmError):
    """Only version 2 transactions are co-signed; the account is frozen."""

    code = ColdErrorCode.BAD_TX_VERSION


class BadLocktime(ColdHsmError):
    """Only nLockTime 0 is co-signed (a time lock would park a signed send); frozen."""

    code = ColdErrorCode.BAD_LOCKTIME


class BadSequence(ColdHsmError):
    """An input sequence outside the documented set (final or BIP125); frozen."""

    code = ColdErrorCode.BAD_SEQUENCE


class ChangeBeyondGap(ColdHsmError):
    """A change index further past the highest co-signed one than the documented gap."""

    code = ColdErrorCode.CHANGE_BEYOND_GAP


class AlreadySwept(ColdHsmError):
    """An outpoint of this sweep was already swept by another sweep."""

    code = ColdErrorCode.ALREADY_SWEPT


class BadSettlementDescriptor(ColdHsmError):
    """A settlement descriptor that is not ranged (`/*`) or has no key origin."""

    code = ColdErrorCode.BAD_SETTLEMENT_DESCRIPTOR


class AccountPending(ColdHsmError):
    """Provisioned, but not yet confirmed at the cold console (`hsm-cold confirm-account`)."""

    code = ColdErrorCode.ACCOUNT_PENDING


class PolicyRefused(ColdHsmError):
    """The send is beyond the account's spending policy (limits or whitelist)."""

    code = ColdErrorCode.POLICY_REFUSED


class ApprovalMissing(ColdHsmError):
    """The policy wants the owner's approval and the V-device's signature does not carry it."""

    code = ColdErrorCode.APPROVAL_MISSING


class PolicyChangeRefused(ColdHsmError):
    """A policy change not signed by the V-device identity, replayed, stale or malformed."""

    code = ColdErrorCode.POLICY_CHANGE_REFUSED


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
