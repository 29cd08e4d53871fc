"""Wallet-core exceptions: one class per failure, each with a stable numeric code.

Codes 500-599 belong to the wallet core. They cross process boundaries (HSM replies, API
errors), so a code is never reused or renumbered; add new ones at the end of a group.
"""

from __future__ import annotations

from cc_errors import CustodyError


class WalletError(CustodyError):
    """Root of every error raised on purpose by `wallet_core`."""

    code = 500


# -- keys and derivation (501-509)
class InvalidKeyError(WalletError):
    """A private or public key is malformed or out of range."""

    code = 501


class InvalidExtendedKeyError(WalletError):
    """An xpub/xprv string or its fields are malformed (checksum, version, depth...)."""

    code = 502


class DerivationPathError(WalletError):
    """A BIP32 path cannot be parsed, or asks for hardened derivation from a public key."""

    code = 503


class DerivationError(WalletError):
    """BIP32 derivation produced an invalid key (probability ~2^-127: skip the index)."""

    code = 504


class MnemonicError(WalletError):
    """A BIP39 mnemonic has an unknown word or a bad checksum."""

    code = 505


# -- addresses and scripts (510-519)
class AddressError(WalletError):
    """An address could not be decoded or encoded."""

    code = 510


class AddressChecksumError(AddressError):
    """The bech32/bech32m or base58check checksum does not match."""

    code = 511


class WrongNetworkError(AddressError):
    """The address is valid but belongs to another network."""

    code = 512


class UnknownPrefixError(AddressError):
    """The human-readable part or the base58 version byte is not any network's."""

    code = 513


class MixedCaseError(AddressError):
    """A bech32 string mixes upper and lower case (BIP173 forbids it)."""

    code = 514


class WitnessProgramError(AddressError):
    """The witness version, program length, encoding variant or padding is wrong."""

    code = 515


class UnsupportedScriptError(AddressError):
    """The script has no standard address form (e.g. bare multisig, OP_RETURN)."""

    code = 516


# -- descriptors (520-524)
class DescriptorError(WalletError):
    """A descriptor is malformed or uses a form this wallet does not produce."""

    code = 520


class DescriptorChecksumError(DescriptorError):
    """A descriptor's `#checksum` does not match (BIP380)."""

    code = 521


# -- PSBT and transactions (525-534)
class PsbtError(WalletError):
    """A PSBT is malformed (BIP174 invalid) or an operation on it is not possible."""

    code = 525


class PsbtFinalizeError(PsbtError):
    """An input lacks the signatures or scripts needed to finalize it."""

    code = 526


class PsbtCombineError(PsbtError):
    """Two PSBTs are for different transactions and cannot be combined."""

    code = 527


class PsbtSignError(PsbtError):
    """A signature cannot be added (wrong key for the input, bad signature, high-S...)."""

    code = 528


class TxParseError(WalletError):
    """An unsigned transaction is refused by the strict parser (`wallet_core.rawtx`)."""

    code = 529


# -- signatures (535-539)
class SignatureError(WalletError):
    """A signature is malformed, high-S, or does not verify."""

    code = 535


class SignerError(SignatureError):
    """An external signer returned something that is not a valid signature for the digest."""

    code = 536


# -- coin selection and fees (540-549)
class CoinSelectionError(WalletError):
    """Coin selection failed."""

    code = 540


class InsufficientFundsError(CoinSelectionError):
    """The UTXOs do not cover the amount plus the fee."""

    code = 541


class TooManyInputsError(CoinSelectionError):
    """Covering the amount would need more inputs than the policy allows."""

    code = 542


class FeeEstimateError(WalletError):
    """The node's `estimatesmartfee` answer is unusable (errors, no feerate)."""

    code = 545


# -- messages and ChainCloud strings (550-559)
class MessageSignatureError(WalletError):
    """A signed message (signmessage format) is malformed or does not verify."""

    code = 550


class OutsError(WalletError):
    """A ChainCloud `outs` string is malformed (address, value or separators)."""

    code = 555


class BatchError(WalletError):
    """An address batch is malformed (wrong count, wrong positions)."""

    code = 556
