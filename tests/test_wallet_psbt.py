"""BIP143 sighash (BIP example, and P2WSH against python-bitcointx), BIP174 vectors, and the
full PSBT flow for both wallets: create, sign with two different signers, combine,
finalize, extract, then script-verified by python-bitcointx (Core's interpreter rules)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from bitcointx.core import CTransaction
from bitcointx.core.script import SIGVERSION_WITNESS_V0, CScript, CScriptWitness, SignatureHash
from bitcointx.core.scripteval import (
    SCRIPT_VERIFY_DERSIG,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_NULLDUMMY,
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_WITNESS,
    VerifyScript,
    VerifyScriptError,
)
from embit.transaction import Transaction as EmbitTx

from wallet_core.addresses import address_to_script
from wallet_core.bip32 import ExtendedKey
from wallet_core.errors import (
    PsbtCombineError,
    PsbtError,
    PsbtFinalizeError,
    PsbtSignError,
)
from wallet_core.hashes import double_sha256
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.sighash import bip143_sighash
from wallet_core.signatures import SoftwareSigner, der_decode, is_low_s, sign_digest
from wallet_core.wallets import (
    AccountKey,
    ColdWallet,
    HotWallet,
    KeyOrigin,
    bip48_account_path,
)

VEC = Path(__file__).parent / "vectors"
BIP143 = json.loads((VEC / "bip143.json").read_text())["p2wpkh"]
BIP174 = json.loads((VEC / "bip174.json").read_text())
FLAGS = {
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_WITNESS,
    SCRIPT_VERIFY_NULLDUMMY,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_DERSIG,
}
NET = Network.REGTEST
DEST = address_to_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", NET)


# -- BIP143
def test_bip143_native_p2wpkh_example() -> None:
    tx = EmbitTx.parse(bytes.fromhex(BIP143["unsigned_tx"]))
    outpoints = b"".join(bytes(reversed(i.txid)) + i.vout.to_bytes(4, "little") for i in tx.vin)
    assert double_sha256(outpoints).hex() == BIP143["hash_prevouts"]
    seqs = b"".join(i.sequence.to_bytes(4, "little") for i in tx.vin)
    assert double_sha256(seqs).hex() == BIP143["hash_sequence"]
    digest = bip143_sighash(
        tx,
        BIP143["input_index"],
        bytes.fromhex(BIP143["script_code"]),
        BIP143["amount"],
        BIP143["sighash_type"],
    )
    assert digest.hex() == BIP143["sighash"]
    sig = SoftwareSigner(bytes.fromhex(BIP143["private_key"]), raw=False)(digest)
    assert (
        SoftwareSigner(bytes.fromhex(BIP143["private_key"])).public_key.hex()
        == BIP143["public_key"]
    )
    assert is_low_s(der_decode(sig)[1])


@pytest.mark.parametrize("sighash_type", [0x01, 0x02, 0x03, 0x81, 0x82, 0x83])
def test_bip143_p2wsh_matches_bitcointx(sighash_type: int) -> None:
    hot, _ = _hot()
    ws = hot.witness_script(4)
    inputs = [
        PsbtInput(os.urandom(32).hex(), n, 10_000 + n, hot.script_pubkey(4), ws) for n in range(3)
    ]
    outputs = [PsbtOutput(DEST, 5_000), PsbtOutput(hot.script_pubkey(1, 1), 20_000)]
    p = Psbt.create(inputs, outputs, locktime=123)
    tx_bytes = p._p.tx.serialize()
    theirs = CTransaction.deserialize(tx_bytes)
    for i in range(3):
        ours = bip143_sighash(p._p.tx, i, ws, 10_000 + i, sighash_type)
        ref = SignatureHash(
            CScript(ws),
            theirs,
            i,
            sighash_type,
            amount=10_000 + i,
            sigversion=SIGVERSION_WITNESS_V0,
        )
        assert ours == bytes(ref)


# -- BIP174 vectors
@pytest.mark.parametrize("entry", BIP174["invalid"], ids=lambda e: e["name"])
def test_bip174_invalid_vectors_are_rejected(entry: dict) -> None:
    with pytest.raises(PsbtError) as exc:
        Psbt.from_base64(entry["base64"])
    assert exc.value.code == 525


@pytest.mark.parametrize("entry", BIP174["valid"], ids=lambda e: e["name"])
def test_bip174_valid_vectors_parse_and_round_trip(entry: dict) -> None:
    p = Psbt.from_base64(entry["base64"])
    assert base64.b64decode(p.to_base64()) == base64.b64decode(entry["base64"])


def test_garbage_is_rejected() -> None:
    for text in ("", "not base64!", base64.b64encode(b"psbt\xff").decode()):
        with pytest.raises(PsbtError):
            Psbt.from_base64(text)


# -- full flows
def _hot(seed: int = 1) -> tuple[HotWallet, list[ExtendedKey]]:
    roots = [ExtendedKey.from_seed(bytes([seed + n]) * 32, NET) for n in range(3)]
    path = bip48_account_path(NET, 0)
    return HotWallet(tuple(AccountKey.from_root(r, path) for r in roots), NET), roots  # type: ignore[arg-type]


def _hot_psbt(hot: HotWallet, pay: int = 60_000) -> Psbt:
    inputs = [
        PsbtInput(
            "aa" * 32, 1, 50_000, hot.script_pubkey(3), hot.witness_script(3), hot.origins(3)
        ),
        PsbtInput(
            "bb" * 32, 0, 40_000, hot.script_pubkey(8), hot.witness_script(8), hot.origins(8)
        ),
    ]
    outputs = [
        PsbtOutput(DEST, pay),
        PsbtOutput(
            hot.script_pubkey(2, 1),
            90_000 - pay - 1_000,
            hot.origins(2, 1),
            hot.witness_script(2, 1),
        ),
    ]
    xpubs = [(c.xpub, KeyOrigin(c.fingerprint, c.path)) for c in hot.cosigners]
    return Psbt.create(inputs, outputs, xpubs=xpubs)


def _verify_all(raw: bytes, spks: list[bytes], amounts: list[int]) -> None:
    tx = CTransaction.deserialize(raw)
    for i, (spk, amount) in enumerate(zip(spks, amounts, strict=True)):
        VerifyScript(
            tx.vin[i].scriptSig,
            CScript(spk),
            tx,
            i,
            flags=FLAGS,
            amount=amount,
            witness=tx.wit.vtxinwit[i].scriptWitness,
        )


def test_hot_2of3_flow_two_signers_verified_by_bitcointx() -> None:
    hot, roots = _hot()
    unsigned = _hot_psbt(hot).to_base64()
    # the hot HSM signs with its BIP32 root using the PSBT's derivations
    a = Psbt.from_base64(unsigned)
    assert a.sign_with_root(roots[0]) == 2
    # the cold HSM signs through the external-signer interface, returning high-S raw r||s
    b = Psbt.from_base64(unsigned)
    for req in b.signing_requests(roots[1].fingerprint):
        node = roots[1].derive(req.origin.path)
        assert node.public_key == req.pubkey
        b.add_signature(
            req.input_index, req.pubkey, SoftwareSigner(node.private_key, high_s=True)(req.digest)
        )
    for i in range(2):
        for sig in b.partial_signatures(i).values():
            assert is_low_s(der_decode(sig[:-1])[1])
    combined = a.combine(b)
    assert combined.fee() == 1_000
    assert len(combined.xpubs()) == 3
    combined.finalize()
    raw = combined.extract()
    _verify_all(raw, [hot.script_pubkey(3), hot.script_pubkey(8)], [50_000, 40_000])
    # the txid does not depend on signatures
    assert CTransaction.deserialize(raw).GetTxid()[::-1].hex() == a.txid


def test_swapped_signature_order_is_rejected_by_the_validator() -> None:
    hot, roots = _hot()
    p = _hot_psbt(hot)
    p.sign_with_root(roots[0])
    p.sign_with_root(roots[2])
    p.finalize()
    raw = bytearray(p.extract())
    tx = CTransaction.deserialize(bytes(raw))
    stack = list(tx.wit.vtxinwit[0].scriptWitness.stack)
    assert stack[0] == b""
    stack[1], stack[2] = stack[2], stack[1]

    with pytest.raises(VerifyScriptError):
        VerifyScript(
            tx.vin[0].scriptSig,
            CScript(hot.script_pubkey(3)),
            tx,
            0,
            flags=FLAGS,
            amount=50_000,
            witness=CScriptWitness(stack),
        )


def test_one_signature_cannot_finalize() -> None:
    hot, roots = _hot()
    p = _hot_psbt(hot)
    p.sign_with_root(roots[1])
    with pytest.raises(PsbtFinalizeError, match="1 of 2"):
        p.finalize()
    with pytest.raises(PsbtFinalizeError):
        p.extract()


def test_signature_for_another_transaction_is_refused() -> None:
    hot, roots = _hot()
    p = _hot_psbt(hot, pay=60_000)
    changed = _hot_psbt(hot, pay=61_000)  # a changed output
    req = changed.signing_requests(roots[0].fingerprint)[0]
    sig = sign_digest(roots[0].derive(req.origin.path).private_key, req.digest)
    with pytest.raises(PsbtSignError, match="does not verify"):
        p.add_signature(req.input_index, req.pubkey, sig)


def test_foreign_key_and_garbage_signatures_are_refused() -> None:
    hot, roots = _hot()
    p = _hot_psbt(hot)
    stranger = SoftwareSigner(b"\x07" * 32)
    with pytest.raises(PsbtSignError, match="does not belong"):
        p.add_signature(0, stranger.public_key, stranger(p.sighash(0)))
    req = p.signing_requests(roots[0].fingerprint)[0]
    with pytest.raises(PsbtSignError, match="malformed"):
        p.add_signature(req.input_index, req.pubkey, b"\x30\x02\x01\x01")


def test_combine_refuses_different_transactions() -> None:
    hot, _ = _hot()
    with pytest.raises(PsbtCombineError):
        _hot_psbt(hot, 60_000).combine(_hot_psbt(hot, 61_000))


def test_change_output_carries_derivations() -> None:
    hot, _ = _hot()
    p = Psbt.from_base64(_hot_psbt(hot).to_base64())
    change = p.outputs[1]
    assert change.origins == hot.origins(2, 1)
    assert change.witness_script == hot.witness_script(2, 1)
    assert p.outputs[0].origins == {}


def test_cold_p2wpkh_sweep_flow() -> None:
    root = ExtendedKey.from_seed(bytes(range(32)), NET)
    cold = ColdWallet.from_root(root, NET)
    inputs = [
        PsbtInput(f"{n:02x}" * 32, n, 25_000, cold.script_pubkey(n), origins=cold.origins(n))
        for n in range(3)
    ]
    p = Psbt.create(inputs, [PsbtOutput(DEST, 74_000)])
    assert p.sign_with_root(root) == 3
    p.finalize()
    _verify_all(p.extract(), [cold.script_pubkey(n) for n in range(3)], [25_000] * 3)


def test_p2wpkh_witness_with_wrong_amount_fails_validation() -> None:
    """The BIP143 digest commits to the amount: the validator must reject a lie about it."""
    root = ExtendedKey.from_seed(bytes(range(32)), NET)
    cold = ColdWallet.from_root(root, NET)
    p = Psbt.create(
        [PsbtInput("cc" * 32, 0, 25_000, cold.script_pubkey(0), origins=cold.origins(0))],
        [PsbtOutput(DEST, 24_000)],
    )
    p.sign_with_root(root)
    p.finalize()
    with pytest.raises(VerifyScriptError):
        _verify_all(p.extract(), [cold.script_pubkey(0)], [25_001])


def test_verified_signatures_are_stored_as_given_for_the_inputs_keys_only() -> None:
    """`add_verified_signature` (signatures its caller verified) takes a key of the input, and
    the result finalizes and validates; a key of no input is refused, nothing stored."""
    hot, roots = _hot()
    p = _hot_psbt(hot)
    for root in roots[:2]:
        for req in p.signing_requests(root.fingerprint):
            der = sign_digest(root.derive(req.origin.path).private_key, req.digest)
            p.add_verified_signature(req.input_index, req.pubkey, der)
    stranger = ExtendedKey.from_seed(b"s" * 32, NET).public_key
    with pytest.raises(PsbtSignError, match="does not belong"):
        p.add_verified_signature(0, stranger, b"0" * 70)
    assert stranger not in p.partial_signatures(0)
    with pytest.raises(PsbtSignError, match="out of range"):
        p.add_verified_signature(5, stranger, b"0" * 70)
    p.finalize()
    _verify_all(p.extract(), [hot.script_pubkey(3), hot.script_pubkey(8)], [50_000, 40_000])


def test_txid_and_unsigned_bytes_are_those_parsed() -> None:
    """A parsed PSBT answers its unsigned transaction and txid from the bytes it was given."""
    hot, _ = _hot()
    created = _hot_psbt(hot)
    parsed = Psbt.from_base64(created.to_base64())
    raw = created._p.tx.serialize()
    assert parsed.unsigned_tx_bytes() == raw == created.unsigned_tx_bytes()
    assert parsed.txid == double_sha256(raw)[::-1].hex() == created._p.tx.txid().hex()
