"""A raw block (`getblock` verbosity 0) read once, for matching against our addresses.

Bitcoin Core answers verbosity 0 by copying the block from disk, while verbosity 2 and 3 build
a JSON object per input and output (hundreds of milliseconds for a mainnet block, in Core as in
the simulated node). The watcher needs, per transaction, only its txid, the outpoints it spends
and its outputs' scripts and values: this reads exactly that in one pass over the bytes, and the
few transactions that concern an account are then asked for decoded (`getrawtransaction` with
the block hash). A block that does not parse is `ChainUnavailable`, as a malformed JSON answer.

`scan_block` is the watcher's entry point: the same reading in C (`_blockscan.c`, built by
setup.py with the package), which with the watcher's filters (`custody.match_filter` bitmaps)
builds objects only for the transactions that may concern an account (one of whose output
scripts, txid or spent txids is in a filter, or which spends a txid in `spent`), ~1 ms of a
2,500-transaction block instead of ~30 ms. The pure-Python reader (`parse_block`) is the
reference it is tested and fuzzed against.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

from custody.chain import _blockscan
from custody.chain.errors import ChainUnavailable

NULL_TXID = "0" * 64


class RawTx(NamedTuple):
    """One transaction as the watcher matches it: outpoints spent (display txid, vout) and
    outputs (value in satoshis, scriptPubKey)."""

    txid: str
    inputs: list[tuple[str, int]]
    outputs: list[tuple[int, bytes]]
    coinbase: bool


@dataclass(frozen=True)
class RawBlock:
    hash: str
    previous: str
    time: int
    txs: list[RawTx]


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    size = 2 if first == 0xFD else 4 if first == 0xFE else 8
    return int.from_bytes(raw[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def parse_block(raw: bytes) -> RawBlock:
    """The block's header fields and transactions; `ChainUnavailable` if it does not parse."""
    try:
        block = _parse(raw)
    except (IndexError, ValueError, OverflowError, struct.error):
        raise ChainUnavailable("node answered getblock with a malformed block") from None
    return block


def scan_block(
    raw: bytes,
    scripts: bytearray | None = None,
    txids: bytearray | None = None,
    spent: set[str] | None = None,
) -> RawBlock:
    """The block's header fields and, with filters, only the transactions that may concern an
    account: an output script's bit set in `scripts`, its txid's or a spent txid's bit set in
    `txids`, or a spent txid in `spent` (the txids of candidates of earlier blocks of a chunk:
    the ones this scan keeps are added to it). No filter: every transaction.
    `ChainUnavailable` if it does not parse."""
    try:
        header_hash, previous, time, txs = _blockscan.scan(raw, scripts, txids, spent)
    except _blockscan.MalformedBlock as exc:
        raise ChainUnavailable(f"node answered getblock with a {exc}") from None
    return RawBlock(header_hash, previous, time, [RawTx(*t) for t in txs])


_U64 = struct.Struct("<Q").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _parse(raw: bytes) -> RawBlock:
    """One pass; the common one-byte lengths are read inline and the txid hashed from
    views of the block, no copies (this loop is the hot path: ~12 us a transaction)."""
    if len(raw) < 81:
        raise ValueError("short block")
    count, pos = _varint(raw, 80)
    txs = []
    end = len(raw)
    frm = int.from_bytes
    sha = hashlib.sha256
    view = memoryview(raw)
    for _ in range(count):
        start = pos
        segwit = raw[pos + 4] == 0 and raw[pos + 5] == 1
        body = pos + 6 if segwit else pos + 4
        n_in = raw[body]
        pos = body + 1
        if n_in >= 0xFD:
            n_in, pos = _varint(raw, body)
        inputs = []
        for _ in range(n_in):
            inputs.append((raw[pos + 31 : pos - 1 : -1].hex(), _U32(raw, pos + 32)[0]))
            slen = raw[pos + 36]
            if slen < 0xFD:
                pos += 41 + slen
            else:
                slen, pos = _varint(raw, pos + 36)
                pos += slen + 4
        n_out = raw[pos]
        pos += 1
        if n_out >= 0xFD:
            n_out, pos = _varint(raw, pos - 1)
        outputs = []
        for _ in range(n_out):
            slen = raw[pos + 8]
            if slen < 0xFD:
                outputs.append((_U64(raw, pos)[0], raw[pos + 9 : pos + 9 + slen]))
                pos += 9 + slen
            else:
                value = _U64(raw, pos)[0]
                slen, pos = _varint(raw, pos + 8)
                outputs.append((value, raw[pos : pos + slen]))
                pos += slen
        body_end = pos
        if segwit:
            for _ in range(n_in):
                items = raw[pos]
                pos += 1
                if items >= 0xFD:
                    items, pos = _varint(raw, pos - 1)
                for _ in range(items):
                    size = raw[pos]
                    if size < 0xFD:
                        pos += 1 + size
                    else:
                        size, pos = _varint(raw, pos)
                        pos += size
            pos += 4
            inner = sha(view[start : start + 4])
            inner.update(view[body:body_end])
            inner.update(view[pos - 4 : pos])
        else:
            pos += 4
            inner = sha(view[start:pos])
        if pos > end:
            raise ValueError("truncated transaction")
        txid = sha(inner.digest()).digest()[::-1].hex()
        coinbase = n_in == 1 and inputs[0][0] == NULL_TXID
        txs.append(RawTx(txid, inputs, outputs, coinbase))
    if pos != end:
        raise ValueError("extra data after the block")
    header = raw[:80]
    return RawBlock(
        hash=_sha256d(header)[::-1].hex(),
        previous=header[4:36][::-1].hex(),
        time=frm(header[68:72], "little"),
        txs=txs,
    )
