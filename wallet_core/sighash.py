"""BIP143 signature hashes for segwit v0 inputs (P2WPKH and P2WSH).

Written from the BIP, over any transaction object shaped like embit's `Transaction`
(`version`, `locktime`, `vin[i].txid/vout/sequence`, `vout[j].value/script_pubkey`), so
the digest that an HSM signs is computed by code we can read in one screen.
"""

from __future__ import annotations

from typing import Any

from .errors import PsbtError
from .hashes import double_sha256
from .script import p2pkh_script

SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
_ZERO = bytes(32)


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _spk(out: Any) -> bytes:
    spk = out.script_pubkey
    return spk.data if hasattr(spk, "data") else bytes(spk)


def _outpoint(inp: Any) -> bytes:
    vout: int = inp.vout
    return bytes(reversed(inp.txid)) + vout.to_bytes(4, "little")


def _ser_output(out: Any) -> bytes:
    spk = _spk(out)
    return int(out.value).to_bytes(8, "little") + varint(len(spk)) + spk


def p2wpkh_script_code(pubkey_hash: bytes) -> bytes:
    """BIP143: the scriptCode of a P2WPKH input is the P2PKH script of the same hash."""
    return p2pkh_script(pubkey_hash)


def bip143_sighash(
    tx: Any, index: int, script_code: bytes, amount: int, sighash_type: int = SIGHASH_ALL
) -> bytes:
    """Digest to sign for input `index` spending `amount` sat under `script_code`.

    For P2WSH, `script_code` is the witness script (no OP_CODESEPARATOR in ours).
    """
    if not 0 <= index < len(tx.vin):
        raise PsbtError(f"input index {index} out of range")
    base = sighash_type & 0x1F
    anyone = bool(sighash_type & SIGHASH_ANYONECANPAY)
    if base not in (SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE):
        raise PsbtError(f"unsupported sighash type {sighash_type:#x}")
    hash_prevouts = _ZERO if anyone else double_sha256(b"".join(_outpoint(i) for i in tx.vin))
    if anyone or base != SIGHASH_ALL:
        hash_sequence = _ZERO
    else:
        hash_sequence = double_sha256(b"".join(i.sequence.to_bytes(4, "little") for i in tx.vin))
    if base == SIGHASH_ALL:
        hash_outputs = double_sha256(b"".join(_ser_output(o) for o in tx.vout))
    elif base == SIGHASH_SINGLE and index < len(tx.vout):
        hash_outputs = double_sha256(_ser_output(tx.vout[index]))
    else:
        hash_outputs = _ZERO
    inp = tx.vin[index]
    preimage = b"".join(
        (
            tx.version.to_bytes(4, "little"),
            hash_prevouts,
            hash_sequence,
            _outpoint(inp),
            varint(len(script_code)),
            script_code,
            int(amount).to_bytes(8, "little"),
            inp.sequence.to_bytes(4, "little"),
            hash_outputs,
            tx.locktime.to_bytes(4, "little"),
            sighash_type.to_bytes(4, "little"),
        )
    )
    return double_sha256(preimage)
