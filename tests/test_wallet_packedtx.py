"""The short transaction body of the co-sign request (`wallet_core.packedtx`): it round-trips
every input and output it can carry, and refuses malformed input with a clear `TxParseError`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet_core.errors import TxParseError
from wallet_core.packedtx import PREFIX_LEN, PackedIn, pack_tx, unpack_tx
from wallet_core.rawtx import TxIn, TxOut

SCRIPTS = [
    b"",  # declared change: the cold HSM derives it
    bytes.fromhex("0014") + bytes(range(20)),  # P2WPKH
    bytes.fromhex("0020") + bytes(range(32)),  # P2WSH
    bytes.fromhex("5120") + bytes(range(32)),  # P2TR
    bytes.fromhex("76a914") + bytes(range(20)) + bytes.fromhex("88ac"),  # P2PKH
    bytes.fromhex("a914") + bytes(range(20)) + bytes.fromhex("87"),  # P2SH
    bytes.fromhex("6a04deadbeef"),  # anything else: raw
    bytes.fromhex("0014") + bytes(21),  # a template's head with the wrong length: raw
]
SEQUENCES = [0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0, 0x80000000]

tx_ins = st.builds(
    TxIn,
    st.binary(min_size=32, max_size=32),
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from(SEQUENCES),
)
tx_outs = st.builds(TxOut, st.integers(0, 21_000_000 * 10**8), st.sampled_from(SCRIPTS))


@given(
    st.lists(tx_ins, min_size=1, max_size=5), st.lists(tx_outs, min_size=1, max_size=5), st.data()
)
def test_round_trip(vin: list[TxIn], vout: list[TxOut], data: st.DataObject) -> None:
    short = frozenset(data.draw(st.sets(st.integers(0, len(vin) - 1))))
    got_in, got_out = unpack_tx(pack_tx(vin, vout, short))
    assert got_out == vout
    assert got_in == [
        PackedIn(i.txid[:PREFIX_LEN] if n in short else i.txid, i.vout, i.sequence, n in short)
        for n, i in enumerate(vin)
    ]


def test_a_verified_spend_is_small() -> None:
    """1 input by prefix, final sequence; a P2WPKH payee and declared change."""
    vin = [TxIn(bytes(range(32)), 1, 0xFFFFFFFD)]
    vout = [TxOut(100_000, SCRIPTS[1]), TxOut(5_000_000, b"")]
    packed = pack_tx(vin, vout, frozenset({0}))
    # 1 + (1 + 8 + 1) inputs, 1 + (3 + 1 + 20) + (4 + 1) outputs; the raw body is 84 bytes
    assert len(packed) == 41


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated in inputs"),
        (b"\x01", "1 inputs cannot fit"),
        (b"\x01\x08" + bytes(32) + b"\x00\x00", "unknown flags"),
        (b"\x01\x04" + bytes(7), "truncated in input 0's txid"),
        (b"\x01\x03" + bytes(32) + b"\x00\x01\x02", "truncated in input 0's sequence"),
        (b"\x01\x00" + bytes(32) + b"\x80\x00\x00", "not minimally encoded"),
        (b"\x01\x00" + bytes(32) + b"\x00\x01\x05\x07" + bytes(20), "unknown script kind 7"),
        (b"\x01\x00" + bytes(32) + b"\x00\x01\x05\x01" + bytes(19), "truncated in output 0's"),
        (b"\x01\x00" + bytes(32) + b"\x00\x01\x05\x00\x00", "1 trailing bytes"),
        (b"\x7f", "127 inputs cannot fit"),
        (b"\x01\x00" + bytes(32) + b"\x00\x01" + b"\xff" * 10 + b"\x01", "too long"),
    ],
)
def test_malformed_input_is_refused_clearly(data: bytes, why: str) -> None:
    with pytest.raises(TxParseError, match=why):
        unpack_tx(data)
