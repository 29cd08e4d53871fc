"""The project's one raw-transaction parser: the strict unsigned reading both HSMs use and the
signed reading custody uses, round-tripped against two independent serializers (embit,
python-bitcointx), and one test per refusal."""

from __future__ import annotations

import hashlib

import pytest
from bitcointx.core import CMutableTransaction, COutPoint, CTxIn, CTxOut, lx
from bitcointx.core.script import CScript
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from wallet_core.chaincloud import MAX_MONEY
from wallet_core.errors import TxParseError, WalletError
from wallet_core.rawtx import (
    MAX_INPUTS,
    MAX_OUTPUTS,
    MAX_SCRIPT,
    TxIn,
    TxOut,
    UnsignedTx,
    parse_signed_tx,
    parse_unsigned_tx,
)
from wallet_core.sighash import bip143_sighash

P2WPKH = bytes([0, 20]) + bytes(range(20))
P2WSH = bytes([0, 32]) + bytes(range(32))


def _embit_tx(
    n_in: int = 2,
    n_out: int = 2,
    *,
    value: int = 50_000,
    script: bytes = P2WPKH,
    script_sig: bytes = b"",
) -> Transaction:
    vin = [
        TransactionInput(
            hashlib.sha256(n.to_bytes(2, "big")).digest(),
            n,
            Script(script_sig),
            sequence=0xFFFFFFFD - n,
        )
        for n in range(n_in)
    ]
    vout = [TransactionOutput(value + n, Script(script)) for n in range(n_out)]
    return Transaction(version=2, vin=vin, vout=vout, locktime=812_345)


def _refused(raw: bytes, match: str) -> TxParseError:
    with pytest.raises(TxParseError, match=match) as refused:
        parse_unsigned_tx(raw)
    assert refused.value.code == 529 and isinstance(refused.value, WalletError)
    return refused.value


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (300, 260)])
def test_round_trip_against_embit(shape: tuple[int, int]) -> None:
    tx = _embit_tx(*shape, script=P2WSH)
    raw = tx.serialize()
    parsed = parse_unsigned_tx(raw)
    assert isinstance(parsed, UnsignedTx) and parsed.raw == raw
    assert parsed.txid == tx.txid().hex()
    assert (parsed.version, parsed.locktime) == (tx.version, tx.locktime)
    assert parsed.vin == tuple(TxIn(i.txid, i.vout, i.sequence) for i in tx.vin)
    assert parsed.vout == tuple(TxOut(o.value, o.script_pubkey.data) for o in tx.vout)
    # shaped like embit's Transaction for BIP143: the digests agree
    for n in range(min(len(tx.vin), 3)):
        assert bip143_sighash(parsed, n, P2WSH[2:], 70_000) == tx.sighash_segwit(
            n, Script(P2WSH[2:]), 70_000
        )


def test_round_trip_against_python_bitcointx() -> None:
    ins = [("ab" * 32, 0, 0xFFFFFFFF), ("cd" * 32, 7, 0)]
    outs = [(MAX_MONEY, P2WPKH), (0, bytes([0x6A, 2, 1, 2])), (546, b"")]
    tx = CMutableTransaction(
        [CTxIn(COutPoint(lx(t), n), nSequence=s) for t, n, s in ins],
        [CTxOut(v, CScript(s)) for v, s in outs],
        nLockTime=0xFFFFFFFF,
        nVersion=1,
    )
    raw = tx.serialize()
    parsed = parse_unsigned_tx(raw)
    assert parsed.txid == tx.GetTxid()[::-1].hex()
    assert (parsed.version, parsed.locktime) == (1, 0xFFFFFFFF)
    assert [(i.txid.hex(), i.vout, i.sequence) for i in parsed.vin] == ins
    assert [(o.value, o.script_pubkey) for o in parsed.vout] == outs


def test_canonical_three_byte_lengths_are_accepted() -> None:
    tx = _embit_tx(MAX_INPUTS, MAX_OUTPUTS, script=bytes(MAX_SCRIPT))
    raw = tx.serialize()
    parsed = parse_unsigned_tx(raw)
    assert (len(parsed.vin), len(parsed.vout)) == (MAX_INPUTS, MAX_OUTPUTS)
    assert parsed.vout[-1].script_pubkey == bytes(MAX_SCRIPT) and parsed.txid == tx.txid().hex()


def test_refuses_witness_serialization() -> None:
    tx = _embit_tx()
    tx.vin[0].witness = Witness([b"\x30" * 71, b"\x02" * 33])
    raw = tx.serialize()
    assert raw[4:6] == b"\x00\x01"
    _refused(raw, "witness serialization")


def test_refuses_a_script_sig() -> None:
    _refused(_embit_tx(script_sig=b"\x51").serialize(), "input 0 has a scriptSig")


def test_refuses_trailing_bytes() -> None:
    raw = _embit_tx().serialize()
    _refused(raw + b"\x00", "1 trailing bytes")
    _refused(raw + b"\x00" * 5, "5 trailing bytes")


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xfd\x01\x00",
        b"\xfd\xfc\x00",
        b"\xfe\x01\x00\x00\x00",
        b"\xff" + (1).to_bytes(8, "little"),
    ],
)
def test_refuses_non_canonical_varints(encoded: bytes) -> None:
    raw = _embit_tx(1, 1).serialize()
    assert raw[4] == 1
    _refused(raw[:4] + encoded + raw[5:], "non-canonical length encoding")


def test_refuses_too_many_inputs_or_outputs() -> None:
    _refused(_embit_tx(MAX_INPUTS + 1, 1).serialize(), f"{MAX_INPUTS + 1} inputs")
    _refused(_embit_tx(1, MAX_OUTPUTS + 1).serialize(), f"{MAX_OUTPUTS + 1} outputs")
    _refused(_embit_tx(1, 0).serialize(), "0 outputs")


def test_refuses_a_value_above_max_money() -> None:
    assert parse_unsigned_tx(_embit_tx(1, 1, value=MAX_MONEY).serialize())
    _refused(_embit_tx(1, 1, value=MAX_MONEY + 1).serialize(), "output 0 value out of range")
    raw = _embit_tx(1, 1).serialize()
    at = raw.index((50_000).to_bytes(8, "little"))
    _refused(raw[:at] + b"\xff" * 8 + raw[at + 8 :], "value out of range")


def test_refuses_an_oversize_script() -> None:
    _refused(_embit_tx(1, 1, script=bytes(MAX_SCRIPT + 1)).serialize(), "output 0 script too long")


def test_refuses_every_truncation() -> None:
    raw = _embit_tx(2, 2).serialize()
    for n in range(len(raw)):
        with pytest.raises(TxParseError):
            parse_unsigned_tx(raw[:n])
    _refused(raw[:-1], "truncated")
    _refused(raw[:50], "truncated")


def test_refuses_what_is_not_bytes() -> None:
    raw = _embit_tx().serialize()
    for bad in (bytearray(raw), raw.hex(), None):
        _refused(bad, "must be bytes")  # type: ignore[arg-type]


# -- signed transactions (custody reads what the HSMs signed) ------------------------------------

SIG_ITEMS = [b"", b"\x30" * 71, b"\x30" * 72, b"\x52" + b"\x21" * 100 + b"\xae"]


def _signed_tx(n_in: int = 2, n_out: int = 2) -> Transaction:
    tx = _embit_tx(n_in, n_out, script=P2WSH)
    for vin in tx.vin:
        vin.witness = Witness(SIG_ITEMS)
    return tx


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (120, 40)])
def test_signed_round_trip_against_embit(shape: tuple[int, int]) -> None:
    tx = _signed_tx(*shape)
    parsed = parse_signed_tx(tx.serialize())
    assert parsed.txid == tx.txid().hex()
    assert parsed.outpoints == [(i.txid.hex(), i.vout) for i in tx.vin]
    assert parsed.outputs == [(o.script_pubkey.data, o.value) for o in tx.vout]
    assert parsed.witnesses == tuple(tuple(SIG_ITEMS) for _ in tx.vin)
    assert (parsed.version, parsed.locktime) == (tx.version, tx.locktime)


def test_signed_reads_legacy_serialization_with_script_sigs() -> None:
    tx = _embit_tx(2, 1, script_sig=b"\x51\x52")
    parsed = parse_signed_tx(tx.serialize())
    assert parsed.txid == tx.txid().hex() and parsed.script_sigs == (b"\x51\x52",) * 2
    assert parsed.witnesses == ((), ())


def test_signed_refuses_every_truncation_with_a_domain_error() -> None:
    """Custody reads the final transaction: any truncation is a `TxParseError`, no `IndexError`."""
    raw = _signed_tx(2, 2).serialize()
    for n in range(len(raw)):
        with pytest.raises(TxParseError):
            parse_signed_tx(raw[:n])
    with pytest.raises(TxParseError, match="truncated"):
        parse_signed_tx(raw[:-1])
    with pytest.raises(TxParseError, match="truncated"):
        parse_signed_tx(raw[:60])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda raw: raw + b"\x00", "1 trailing bytes"),
        (lambda raw: raw[:5] + b"\x02" + raw[6:], "unknown witness flag"),
        (lambda raw: raw[:6] + b"\xfe\xff\xff\xff\x7f" + raw[7:], "inputs is more than"),
        (lambda raw: raw[:6] + b"\xfd\xf4\x01" + raw[7:], r"truncated transaction \(500 inputs"),
    ],
)
def test_signed_refusals(mutate, match: str) -> None:
    with pytest.raises(TxParseError, match=match):
        parse_signed_tx(mutate(_signed_tx(1, 1).serialize()))


def test_signed_refuses_a_witness_marker_without_witnesses() -> None:
    tx = _embit_tx(1, 1)
    raw = tx.serialize()
    body = raw[4:-4]
    with pytest.raises(TxParseError, match="without any witness"):
        parse_signed_tx(raw[:4] + b"\x00\x01" + body + b"\x00" + raw[-4:])


def test_signed_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TxParseError, match="must be bytes"):
        parse_signed_tx("00")  # type: ignore[arg-type]
