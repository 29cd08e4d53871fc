"""The PKCS#11 token layer shared by the hot and the cold HSM.

PKCS#11 is wrapped here once, in the words of the domain: `HsmToken.open(section)` gives a
logged-in token whose `keys` sign digests with secp256k1 keys that never leave it and whose
`seals` encrypt seeds at rest under an AES key that never leaves it. Loading the module only
happens on `open`; importing this package touches no token.
"""

from cc_common.token.aes_keys import AesKeys
from cc_common.token.ec_keys import EcKeys
from cc_common.token.errors import (
    DecryptionFailed,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    KeyProtected,
    MechanismUnsupported,
    ModuleConflict,
    PinIncorrect,
    SessionLost,
    SignatureCheckFailed,
    TokenBusy,
    TokenError,
    TokenInitFailed,
    TokenLocked,
    TokenNotFound,
)
from cc_common.token.hsm_token import HsmToken
from cc_common.token.pin_guard import PinState
from cc_common.token.session import TokenSession, reset_pin_lock
from cc_common.token.settings import TokenSettings
from cc_common.token.softhsm import init_softhsm_token, use_softhsm_conf
from cc_common.token.types import PinRole, Provisioned

__all__ = [
    "AesKeys",
    "DecryptionFailed",
    "EcKeys",
    "HsmToken",
    "InvalidArgument",
    "KeyExists",
    "KeyNotFound",
    "KeyProtected",
    "MechanismUnsupported",
    "ModuleConflict",
    "PinIncorrect",
    "PinRole",
    "PinState",
    "Provisioned",
    "SessionLost",
    "SignatureCheckFailed",
    "TokenBusy",
    "TokenError",
    "TokenInitFailed",
    "TokenLocked",
    "TokenNotFound",
    "TokenSession",
    "TokenSettings",
    "init_softhsm_token",
    "reset_pin_lock",
    "use_softhsm_conf",
]
