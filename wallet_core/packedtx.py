"""The short transaction body of the co-sign request (docs/hsm-pair.md, "The short form").

The serial line between the HSMs is the throughput ceiling, and most of a co-sign request is
the unsigned transaction. This writes it with what the cold HSM cannot derive and has not seen:

    n_in:varint  per input:  flags:u8  txid[32] or txid[:8]  vout:varint  [sequence:u32le]
    n_out:varint per output: value:varint  kind:u8  [program]

`flags`: bits 0-1 the sequence (0 = 0xffffffff, 1 = 0xfffffffe, 2 = 0xfffffffd, 3 = the u32
follows the vout), bit 2 set when only the txid's first `PREFIX_LEN` bytes (display order)
travel: the receiver fills in the rest, and the input's amount, from outputs it verified
itself; other bits must be 0. `kind`: 0 no script (declared change: the receiver derives it),
1-5 the standard templates below followed by their hash or program, 6 a raw script
(varint length + bytes). Varints are minimal LEB128; version and nLockTime are not here (2 and
0: the cold HSM accepts no other), nor any scriptSig (always empty in an unsigned segwit
spend). Decoding refuses anything malformed, trailing bytes included, with `TxParseError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wallet_core import leb128
from wallet_core.errors import TxParseError
from wallet_core.rawtx import TxIn, TxOut

PREFIX_LEN = 8
TXID_LEN = 32
SHORT_REF = 0x04
SEQUENCE_CODES = (0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD)
EXPLICIT_SEQUENCE = 3
MAX_ITEMS = 10_000

# kind -> (bytes before the hash or program, its length, bytes after it)
TEMPLATES: dict[int, tuple[bytes, int, bytes]] = {
    1: (b"\x00\x14", 20, b""),  # P2WPKH
    2: (b"\x00\x20", 32, b""),  # P2WSH
    3: (b"\x51\x20", 32, b""),  # P2TR
    4: (b"\x76\xa9\x14", 20, b"\x88\xac"),  # P2PKH
    5: (b"\xa9\x14", 20, b"\x87"),  # P2SH
}
NO_SCRIPT = 0
RAW_SCRIPT = 6


@dataclass(frozen=True)
class PackedIn:
    """An input as packed: the whole txid, or (`short`) its first `PREFIX_LEN` bytes."""

    txid: bytes
    vout: int
    sequence: int
    short: bool


def pack_tx(vin: Sequence[TxIn], vout: Sequence[TxOut], short: frozenset[int]) -> bytes:
    """The packed body of `vin` and `vout`; inputs whose index is in `short` by txid prefix.
    A declared change output is passed with an empty script (written as kind 0)."""
    out = bytearray()
    leb128.write(len(vin), out)
    for n, tx_in in enumerate(vin):
        code = (
            SEQUENCE_CODES.index(tx_in.sequence)
            if tx_in.sequence in SEQUENCE_CODES
            else EXPLICIT_SEQUENCE
        )
        is_short = n in short
        out.append(code | (SHORT_REF if is_short else 0))
        out += tx_in.txid[:PREFIX_LEN] if is_short else tx_in.txid
        leb128.write(tx_in.vout, out)
        if code == EXPLICIT_SEQUENCE:
            out += tx_in.sequence.to_bytes(4, "little")
    leb128.write(len(vout), out)
    for tx_out in vout:
        leb128.write(tx_out.value, out)
        out += _pack_script(tx_out.script_pubkey)
    return bytes(out)


def _pack_script(script: bytes) -> bytes:
    if not script:
        return bytes((NO_SCRIPT,))
    for kind, (head, size, tail) in TEMPLATES.items():
        if (
            len(script) == len(head) + size + len(tail)
            and script.startswith(head)
            and script.endswith(tail)
        ):
            return bytes((kind,)) + script[len(head) : len(head) + size]
    out = bytearray((RAW_SCRIPT,))
    leb128.write(len(script), out)
    return bytes(out + script)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > len(self.data):
            raise TxParseError(f"packed transaction: truncated in {what}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def varint(self, what: str) -> int:
        try:
            n, self.at = leb128.read(self.data, self.at, max_bytes=10)
        except leb128.VarintError as exc:
            if exc.reason == leb128.TRUNCATED:
                raise TxParseError(f"packed transaction: truncated in {what}") from None
            raise TxParseError(f"packed transaction: {what} {exc.reason}") from None
        return n

    def count(self, what: str) -> int:
        n = self.varint(what)
        if n > MAX_ITEMS or n > len(self.data) - self.at:
            raise TxParseError(f"packed transaction: {n} {what} cannot fit")
        return n


def unpack_tx(data: bytes) -> tuple[list[PackedIn], list[TxOut]]:
    """The inputs (txid or prefix) and outputs of a packed body; `TxParseError` if malformed."""
    r = _Reader(data)
    vin: list[PackedIn] = []
    for n in range(r.count("inputs")):
        flags = r.take(1, f"input {n}")[0]
        if flags & ~(SHORT_REF | 0x03):
            raise TxParseError(f"packed transaction: input {n} has unknown flags {flags:#04x}")
        short = bool(flags & SHORT_REF)
        txid = r.take(PREFIX_LEN if short else TXID_LEN, f"input {n}'s txid")
        vout = r.varint(f"input {n}'s vout")
        if vout > 0xFFFFFFFF:
            raise TxParseError(f"packed transaction: input {n}'s vout is out of range")
        code = flags & 0x03
        if code == EXPLICIT_SEQUENCE:
            sequence = int.from_bytes(r.take(4, f"input {n}'s sequence"), "little")
        else:
            sequence = SEQUENCE_CODES[code]
        vin.append(PackedIn(txid, vout, sequence, short))
    vout_list: list[TxOut] = []
    for n in range(r.count("outputs")):
        value = r.varint(f"output {n}'s value")
        if value >= 1 << 63:
            raise TxParseError(f"packed transaction: output {n}'s value is out of range")
        kind = r.take(1, f"output {n}'s script kind")[0]
        if kind == NO_SCRIPT:
            script = b""
        elif kind in TEMPLATES:
            head, size, tail = TEMPLATES[kind]
            script = head + r.take(size, f"output {n}'s script") + tail
        elif kind == RAW_SCRIPT:
            length = r.varint(f"output {n}'s script length")
            script = r.take(length, f"output {n}'s script")
        else:
            raise TxParseError(f"packed transaction: output {n} has unknown script kind {kind}")
        vout_list.append(TxOut(value, script))
    if r.at != len(data):
        raise TxParseError(f"packed transaction: {len(data) - r.at} trailing bytes")
    return vin, vout_list
