"""Pairing of the two HSMs: one link key, carried once from the cold side to the hot side.

`hsm-cold init` makes the link key and writes it, with the cold identity public key, to a
one-time pairing file (mode 0600; in production, removable media walked across the air gap).
`hsm-hot init` reads it and deletes it. Each side keeps the link key sealed under the AES key
in its own token, so the key is never at rest in clear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cc_common.errors import CustodyError

MAGIC = b"CCPAIR1"
LINK_KEY_SIZE = 32


class PairingError(CustodyError):
    """A pairing file is missing, malformed or for another pair of HSMs."""

    code = 110


@dataclass(frozen=True)
class PairingBundle:
    link_key: bytes
    cold_identity: bytes  # 33-byte compressed secp256k1 public key

    def to_bytes(self) -> bytes:
        return MAGIC + self.link_key + self.cold_identity

    @classmethod
    def from_bytes(cls, data: bytes) -> PairingBundle:
        if len(data) != len(MAGIC) + LINK_KEY_SIZE + 33 or not data.startswith(MAGIC):
            raise PairingError("pairing file is not a ChainCloud pairing bundle")
        body = data[len(MAGIC) :]
        return cls(link_key=body[:LINK_KEY_SIZE], cold_identity=body[LINK_KEY_SIZE:])


def write_pairing_file(path: Path, bundle: PairingBundle) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.to_bytes())


def take_pairing_file(path: Path) -> PairingBundle:
    """Read the one-time pairing file and remove it."""
    if not path.is_file():
        raise PairingError(
            f"no pairing file at {path}: run `hsm-cold init` first (it writes the file once)"
        )
    bundle = PairingBundle.from_bytes(path.read_bytes())
    path.unlink()
    return bundle
