"""The cold HSM's keys in the words of the domain: identity key, sealed seeds, the link key.

Everything secret is either a non-extractable object in the cold token (identity key, AES
wrapping key) or a blob sealed under that AES key in the cold store. Plain seeds exist only in
memory, for the duration of one derivation or signature.
"""

from __future__ import annotations

from collections.abc import Callable

from cc_common.pairing import LINK_KEY_SIZE, PairingBundle
from cc_common.token import HsmToken
from hsm_cold.store import ColdStore

IDENTITY_KEY = "cold/identity"
SEAL_KEY = "cold/seal"
LINK_SECRET = "link_key"  # noqa: S105 (a record name, not a secret)
CHANNEL_KEY_PREFIX = "chan"


def channel_key_label(account: int, c_id: str) -> str:
    """The token label of the cold key of one SMS channel: `chan/<account>/<c_id>`."""
    return f"{CHANNEL_KEY_PREFIX}/{account}/{c_id}"


class ColdKeystore:
    def __init__(self, token: HsmToken, store: ColdStore) -> None:
        self.token = token
        self.store = store

    def ensure_keys(self) -> bytes:
        """Create the identity and sealing keys if missing; return the identity public key."""
        self.token.seals.ensure_wrapping_key(SEAL_KEY)
        if not self.token.keys.has_key(IDENTITY_KEY):
            return self.token.keys.generate_signing_key(IDENTITY_KEY)
        return self.token.keys.public_key(IDENTITY_KEY)

    @property
    def identity_pubkey(self) -> bytes:
        return self.token.keys.public_key(IDENTITY_KEY)

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        return self.token.seals.encrypt(SEAL_KEY, plaintext, purpose.encode())

    def unseal(self, blob: bytes, purpose: str) -> bytes:
        return self.token.seals.decrypt(SEAL_KEY, blob, purpose.encode())

    def random(self, n: int) -> bytes:
        return self.token.session.random_bytes(n)

    def sign_message_digest(self, digest: bytes) -> bytes:
        """65-byte compact recoverable signature by the identity key (signed-message format)."""
        return self.token.keys.sign_recoverable(IDENTITY_KEY, digest)

    # -- SMS channel keys (made in the token, never extractable) ----------------------------
    def new_channel_key(self, label: str) -> bytes:
        """A fresh secp256k1 key in the token for one channel; its compressed public key."""
        return self.token.keys.generate_signing_key(label)

    def channel_signer(self, label: str) -> Callable[[bytes], bytes]:
        """The `Signer` hook of a channel key: digest -> 65-byte compact signature."""
        return lambda digest: self.token.keys.sign_recoverable(label, digest)

    # -- the link key ------------------------------------------------------------------------
    def has_link_key(self) -> bool:
        return self.store.get_secret(LINK_SECRET) is not None

    def new_pairing(self) -> PairingBundle:
        """Make and keep a fresh link key; return the bundle for the hot side."""
        key = self.random(LINK_KEY_SIZE)
        self.store.put_secret(LINK_SECRET, self.seal(key, LINK_SECRET))
        return PairingBundle(link_key=key, cold_identity=self.identity_pubkey)

    def link_key(self) -> bytes | None:
        blob = self.store.get_secret(LINK_SECRET)
        return None if blob is None else self.unseal(blob, LINK_SECRET)
