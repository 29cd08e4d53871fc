"""PSBT (BIP174) in our vocabulary: create, sign with external signers, combine, finalize,
extract. embit's PSBT does the (de)serialization underneath; this module is the only one
that imports it, so the choice can change in one place.

We add the strictness BIP174 asks for and embit skips (unsigned tx must have empty
scriptSigs and no witness serialization), compute digests with our own BIP143 code, and
check every partial signature (low-S DER, verifies for its key) before it is stored.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from embit import ec as embit_ec
from embit.bip32 import HDKey
from embit.psbt import PSBT as _EmbitPSBT
from embit.psbt import DerivationPath as _EmbitDerivation
from embit.script import Script as _EmbitScript
from embit.script import Witness as _EmbitWitness
from embit.transaction import Transaction as _EmbitTx
from embit.transaction import TransactionInput as _EmbitTxIn
from embit.transaction import TransactionOutput as _EmbitTxOut

from . import signatures
from .bip32 import ExtendedKey
from .errors import (
    PsbtCombineError,
    PsbtError,
    PsbtFinalizeError,
    PsbtSignError,
    SignatureError,
    TxParseError,
    UnsupportedScriptError,
)
from .hashes import double_sha256, hash160, sha256
from .prevtx import parse_prev_tx
from .script import ScriptType, classify, parse_multisig
from .sighash import SIGHASH_ALL, bip143_sighash, p2wpkh_script_code
from .wallets import KeyOrigin

DEFAULT_SEQUENCE = 0xFFFFFFFD  # RBF-signalling, locktime-enabled (Core's default)


@dataclass(frozen=True)
class PsbtInput:
    """A UTXO to spend. `witness_script` is required for P2WSH."""

    txid: str  # display (RPC) order hex
    vout: int
    value: int
    script_pubkey: bytes
    witness_script: bytes | None = None
    origins: dict[bytes, KeyOrigin] = field(default_factory=dict)
    sequence: int = DEFAULT_SEQUENCE
    prev_tx: bytes | None = None  # the whole funding transaction (PSBT_IN_NON_WITNESS_UTXO)


@dataclass(frozen=True)
class PsbtOutput:
    """A payment or change output. Change carries `origins` (and its witness script)."""

    script_pubkey: bytes
    value: int
    origins: dict[bytes, KeyOrigin] = field(default_factory=dict)
    witness_script: bytes | None = None


@dataclass(frozen=True)
class SigningRequest:
    """One signature a signer should make: input, key, its origin and the BIP143 digest."""

    input_index: int
    pubkey: bytes
    origin: KeyOrigin
    digest: bytes


def _derivation(origin: KeyOrigin) -> _EmbitDerivation:
    return _EmbitDerivation(origin.fingerprint, list(origin.path))


def _origin(d: _EmbitDerivation) -> KeyOrigin:
    return KeyOrigin(bytes(d.fingerprint), tuple(d.derivation))


# PSBT v2 fields (BIP370): embit applies them to a v0 PSBT too, replacing the unsigned
# transaction's version, locktime, outpoints, sequences, amounts or scripts, or sizing its maps.
_V2_ONLY_GLOBALS = {
    2: "tx version",
    3: "fallback locktime",
    4: "input count",
    5: "output count",
    6: "tx modifiable",
}


def _check_globals(raw: bytes) -> bytes | None:
    """BIP174 rules embit skips: the global unsigned tx is non-witness serialized, without
    scriptSigs, and no v2-only global field sits beside it. Returns the unsigned tx's bytes."""
    s = io.BytesIO(raw)
    if s.read(5) != b"psbt\xff":
        raise PsbtError("not a PSBT (bad magic bytes)")
    tx = None
    while key := _read_exact(s, _read_compact(s)):  # an empty key ends the global map
        value = _read_exact(s, _read_compact(s))
        if key[0] in _V2_ONLY_GLOBALS:
            raise PsbtError(f"PSBT v0 with the v2 global field {_V2_ONLY_GLOBALS[key[0]]}")
        if key == b"\x00":
            _check_unsigned_tx(value)
            tx = value
    return tx


def _check_unsigned_tx(tx: bytes) -> None:
    if len(tx) >= 6 and tx[4] == 0 and tx[5] != 0:
        raise PsbtError("unsigned transaction uses witness serialization")
    try:
        parsed = _EmbitTx.parse(tx)
    except Exception:  # noqa: BLE001 (embit reports the details when it parses the whole PSBT)
        return
    for n, vin in enumerate(parsed.vin):
        if vin.script_sig.data:
            raise PsbtError(f"unsigned transaction input {n} has a scriptSig")


def _read_compact(s: io.BytesIO) -> int:
    n = _read_exact(s, 1)[0]
    if n < 0xFD:
        return n
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[n]
    return int.from_bytes(_read_exact(s, size), "little")


def _read_exact(s: io.BytesIO, n: int) -> bytes:
    """`n` bytes or `PsbtError`: a length field may claim up to 2**64 - 1 bytes."""
    if n > len(s.getbuffer()) - s.tell():
        raise PsbtError("truncated PSBT (a length runs past the end)")
    return s.read(n)


class Psbt:
    """A partially signed transaction (PSBT v0)."""

    def __init__(self, inner: _EmbitPSBT, unsigned_tx: bytes | None = None) -> None:
        self._p = inner
        # the unsigned transaction's bytes, once known (never changed after creation)
        self._unsigned = unsigned_tx

    # -- creation and encoding
    @classmethod
    def create(
        cls,
        inputs: Sequence[PsbtInput],
        outputs: Sequence[PsbtOutput],
        *,
        locktime: int = 0,
        version: int = 2,
        xpubs: Iterable[tuple[ExtendedKey, KeyOrigin]] = (),
    ) -> Psbt:
        """Creator + updater: unsigned tx, witness UTXOs, scripts, derivations, global xpubs."""
        if not inputs or not outputs:
            raise PsbtError("a transaction needs at least one input and one output")
        vin = []
        for i in inputs:
            try:
                txid = bytes.fromhex(i.txid)
            except ValueError:
                raise PsbtError(f"bad txid {i.txid!r}") from None
            if len(txid) != 32:
                raise PsbtError(f"bad txid {i.txid!r}")
            vin.append(_EmbitTxIn(txid, i.vout, sequence=i.sequence))
        for o in outputs:
            if o.value < 0:
                raise PsbtError("negative output value")
        vout = [_EmbitTxOut(o.value, _EmbitScript(o.script_pubkey)) for o in outputs]
        p = _EmbitPSBT(_EmbitTx(version=version, vin=vin, vout=vout, locktime=locktime))
        for scope, i in zip(p.inputs, inputs, strict=True):
            scope.witness_utxo = _EmbitTxOut(i.value, _EmbitScript(i.script_pubkey))
            info = classify(i.script_pubkey)
            if info.type is ScriptType.P2WSH:
                if i.witness_script is None or sha256(i.witness_script) != info.program:
                    raise PsbtError(f"input {i.txid}:{i.vout}: witness script missing or wrong")
                scope.witness_script = _EmbitScript(i.witness_script)
            elif info.type is not ScriptType.P2WPKH:
                raise PsbtError(f"input {i.txid}:{i.vout}: only P2WPKH and P2WSH are spendable")
            for pub, origin in i.origins.items():
                scope.bip32_derivations[embit_ec.PublicKey.parse(pub)] = _derivation(origin)
        result = cls(p)
        for n, i in enumerate(inputs):
            if i.prev_tx is not None:
                result.set_prev_tx(n, i.prev_tx)
        for scope, o in zip(p.outputs, outputs, strict=True):
            if o.witness_script is not None:
                scope.witness_script = _EmbitScript(o.witness_script)
            for pub, origin in o.origins.items():
                scope.bip32_derivations[embit_ec.PublicKey.parse(pub)] = _derivation(origin)
        for xpub, origin in xpubs:
            public = xpub.to_public()
            public = public.with_version(public.network.params.xkey.public)  # BIP174: xpub/tpub
            hd = HDKey.from_string(public.serialize())
            p.xpubs[hd] = _derivation(origin)
        return result

    @classmethod
    def from_bytes(cls, raw: bytes) -> Psbt:
        """Parse and validate (BIP174 invalid vectors are rejected with `PsbtError`)."""
        unsigned_tx = _check_globals(raw)
        try:
            p = _EmbitPSBT.parse(raw)
        except Exception as exc:  # noqa: BLE001 (embit raises several unrelated types)
            raise PsbtError(f"invalid PSBT: {exc}") from None
        if p.version not in (None, 0):
            raise PsbtError(f"unsupported PSBT version {p.version}")
        try:  # v2 input/output fields would have changed it (see _V2_ONLY_GLOBALS)
            same = p.tx.serialize() == unsigned_tx
        except (ValueError, OverflowError, TypeError):
            same = False
        if not same:
            raise PsbtError("PSBT fields contradict its unsigned transaction (v2 fields in v0?)")
        return cls(p, unsigned_tx)

    @classmethod
    def from_base64(cls, text: str) -> Psbt:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PsbtError("PSBT is not valid base64") from None
        return cls.from_bytes(raw)

    def to_bytes(self) -> bytes:
        return bytes(self._p.serialize())

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode()

    def copy(self) -> Psbt:
        return Psbt.from_bytes(self.to_bytes())

    # -- inspection
    @property
    def txid(self) -> str:
        """txid of the unsigned transaction (stable: segwit signatures do not change it)."""
        return double_sha256(self.unsigned_tx_bytes())[::-1].hex()

    def unsigned_tx_bytes(self) -> bytes:
        """The global unsigned transaction, non-witness serialized (its txid's preimage)."""
        if self._unsigned is None:
            self._unsigned = bytes(self._p.tx.serialize())
        return self._unsigned

    @property
    def input_count(self) -> int:
        return len(self._p.inputs)

    @property
    def outputs(self) -> list[PsbtOutput]:
        out = []
        for scope in self._p.outputs:
            origins = {pub.sec(): _origin(d) for pub, d in scope.bip32_derivations.items()}
            ws = scope.witness_script.data if scope.witness_script is not None else None
            out.append(PsbtOutput(scope.script_pubkey.data, scope.value, origins, ws))
        return out

    def input_value(self, i: int) -> int:
        utxo = self._p.inputs[i].witness_utxo
        if utxo is None:
            raise PsbtError(f"input {i} has no witness UTXO")
        return int(utxo.value)

    def input_script_pubkey(self, i: int) -> bytes:
        utxo = self._p.inputs[i].witness_utxo
        if utxo is None:
            raise PsbtError(f"input {i} has no witness UTXO")
        return bytes(utxo.script_pubkey.data)

    def input_witness_script(self, i: int) -> bytes | None:
        ws = self._p.inputs[i].witness_script
        return None if ws is None else ws.data

    def input_prev_tx(self, i: int) -> bytes | None:
        """The funding transaction of input `i` if the PSBT carries it (network bytes)."""
        tx = self._p.inputs[i].non_witness_utxo
        return None if tx is None else tx.serialize()

    def set_prev_tx(self, i: int, raw: bytes) -> None:
        """Attach input `i`'s funding transaction; it must hash to the txid the input spends
        and its output must be the input's witness UTXO."""
        try:
            prev = parse_prev_tx(raw)
        except TxParseError as exc:
            raise PsbtError(f"input {i}: {exc.message}") from None
        vin = self._p.tx.vin[i]
        if prev.txid != vin.txid.hex():
            raise PsbtError(f"input {i}: the previous transaction is {prev.txid}, not its own")
        if vin.vout >= len(prev.vout):
            raise PsbtError(f"input {i}: the previous transaction has no output {vin.vout}")
        out = prev.vout[vin.vout]
        utxo = self._p.inputs[i].witness_utxo
        if utxo is not None and (utxo.value, utxo.script_pubkey.data) != (
            out.value,
            out.script_pubkey,
        ):
            raise PsbtError(f"input {i}: the witness UTXO differs from the previous transaction")
        try:
            self._p.inputs[i].non_witness_utxo = _EmbitTx.parse(raw)
        except Exception as exc:  # noqa: BLE001 (embit raises several unrelated types)
            raise PsbtError(f"input {i}: previous transaction: {exc}") from None

    def input_origins(self, i: int) -> dict[bytes, KeyOrigin]:
        scope = self._p.inputs[i]
        return {pub.sec(): _origin(d) for pub, d in scope.bip32_derivations.items()}

    def fee(self) -> int:
        spent = sum(self.input_value(i) for i in range(self.input_count))
        return spent - sum(int(o.value) for o in self._p.tx.vout)

    def xpubs(self) -> list[tuple[ExtendedKey, KeyOrigin]]:
        return [(ExtendedKey.parse(hd.to_string()), _origin(d)) for hd, d in self._p.xpubs.items()]

    # -- signing
    def _script_code(self, i: int) -> bytes:
        scope = self._p.inputs[i]
        if scope.witness_utxo is None:
            raise PsbtError(f"input {i} has no witness UTXO")
        info = classify(scope.witness_utxo.script_pubkey.data)
        if info.type is ScriptType.P2WPKH:
            return p2wpkh_script_code(info.program)
        if info.type is ScriptType.P2WSH:
            if scope.witness_script is None:
                raise PsbtError(f"input {i} has no witness script")
            ws: bytes = scope.witness_script.data
            if sha256(ws) != info.program:
                raise PsbtError(f"input {i}: witness script does not match the output")
            return ws
        raise PsbtError(f"input {i}: only P2WPKH and P2WSH inputs are supported")

    def _input_keys(self, i: int) -> list[bytes]:
        scope = self._p.inputs[i]
        info = classify(scope.witness_utxo.script_pubkey.data)
        if info.type is ScriptType.P2WSH:
            return parse_multisig(scope.witness_script.data)[1]
        return [pub.sec() for pub in scope.bip32_derivations if hash160(pub.sec()) == info.program]

    def sighash(self, i: int, sighash_type: int = SIGHASH_ALL) -> bytes:
        """BIP143 digest of input `i` (our own implementation; see `sighash.py`)."""
        scope = self._p.inputs[i]
        if scope.sighash_type not in (None, sighash_type):
            raise PsbtError(f"input {i} asks for sighash type {scope.sighash_type}")
        return bip143_sighash(
            self._p.tx, i, self._script_code(i), self.input_value(i), sighash_type
        )

    def signing_requests(self, fingerprint: bytes) -> list[SigningRequest]:
        """Signatures a signer whose master fingerprint is `fingerprint` should make."""
        reqs = []
        for i, scope in enumerate(self._p.inputs):
            keys = set(self._input_keys(i))
            for pub, d in scope.bip32_derivations.items():
                sec = pub.sec()
                if bytes(d.fingerprint) == fingerprint and sec in keys:
                    reqs.append(SigningRequest(i, sec, _origin(d), self.sighash(i)))
        return reqs

    def add_signature(self, i: int, pubkey: bytes, signature: bytes) -> None:
        """Store a partial signature (DER or raw r||s, without sighash byte) after checking it.

        The key must be one of the input's keys, and the signature must verify; high-S is
        normalised (same signature, canonical form).
        """
        self._check_input_key(i, pubkey)
        digest = self.sighash(i)
        try:
            der = signatures.normalize_signature(signature, pubkey, digest)
        except SignatureError as exc:
            raise PsbtSignError(f"input {i}: {exc.message}") from None
        self._put_signature(i, pubkey, der)

    def add_verified_signature(self, i: int, pubkey: bytes, der: bytes) -> None:
        """Store a low-S DER signature that its caller has already verified for `pubkey` and
        this input's `sighash(i)` (the hot HSM verifies each one where it enters: the cold
        HSM's answer, the token's output), without computing the digest and verifying again.
        The key must still be one of the input's keys."""
        self._check_input_key(i, pubkey)
        self._put_signature(i, pubkey, der)

    def _check_input_key(self, i: int, pubkey: bytes) -> None:
        """Input `i` exists and `pubkey` is one of its keys."""
        if not 0 <= i < self.input_count:
            raise PsbtSignError(f"input index {i} out of range")
        if pubkey not in self._input_keys(i):
            raise PsbtSignError(f"key {pubkey.hex()} does not belong to input {i}")

    def _put_signature(self, i: int, pubkey: bytes, der: bytes) -> None:
        self._p.inputs[i].partial_sigs[embit_ec.PublicKey.parse(pubkey)] = der + bytes(
            [SIGHASH_ALL]
        )

    def sign(self, signer: signatures.ExternalSigner, pubkey: bytes) -> int:
        """Sign every input that `pubkey` can sign with an external signer; return the count."""
        n = 0
        for i in range(self.input_count):
            if pubkey in self._input_keys(i):
                self.add_signature(i, pubkey, signer(self.sighash(i)))
                n += 1
        return n

    def sign_with_root(self, root: ExtendedKey) -> int:
        """Sign with a private BIP32 root, using the derivations recorded in the PSBT."""
        fpr = root.fingerprint
        n = 0
        for req in self.signing_requests(fpr):
            node = root.derive(req.origin.path)
            if node.public_key != req.pubkey:
                raise PsbtSignError(f"input {req.input_index}: derivation does not match key")
            self.add_signature(
                req.input_index, req.pubkey, signatures.sign_digest(node.private_key, req.digest)
            )
            n += 1
        return n

    def partial_signatures(self, i: int) -> dict[bytes, bytes]:
        return {pub.sec(): sig for pub, sig in self._p.inputs[i].partial_sigs.items()}

    # -- combine, finalize, extract
    def combine(self, *others: Psbt) -> Psbt:
        """BIP174 combiner: union of the fields of PSBTs for the same unsigned transaction."""
        result = self.copy()
        for other in others:
            if other._p.tx.serialize() != result._p.tx.serialize():
                raise PsbtCombineError("cannot combine PSBTs of different transactions")
            for a, b in zip(result._p.inputs, other._p.inputs, strict=True):
                for pub, sig in b.partial_sigs.items():
                    a.partial_sigs[pub] = sig
                a.bip32_derivations.update(b.bip32_derivations)
                a.witness_utxo = a.witness_utxo or b.witness_utxo
                a.witness_script = a.witness_script or b.witness_script
                a.final_scriptwitness = a.final_scriptwitness or b.final_scriptwitness
            for a, b in zip(result._p.outputs, other._p.outputs, strict=True):
                a.bip32_derivations.update(b.bip32_derivations)
                a.witness_script = a.witness_script or b.witness_script
            result._p.xpubs.update(other._p.xpubs)
        return result

    def finalize(self) -> None:
        """Input finalizer for P2WPKH and 2-of-3 P2WSH; raises if any input lacks signatures."""
        for i, scope in enumerate(self._p.inputs):
            if scope.final_scriptwitness is not None:
                continue
            sigs = self.partial_signatures(i)
            info = classify(scope.witness_utxo.script_pubkey.data)
            digest = self.sighash(i)
            for pub, sig in sigs.items():
                if sig[-1] != SIGHASH_ALL or not signatures.verify_digest(pub, digest, sig[:-1]):
                    raise PsbtFinalizeError(f"input {i}: invalid partial signature")
            if info.type is ScriptType.P2WPKH:
                match = [(p, s) for p, s in sigs.items() if hash160(p) == info.program]
                if not match:
                    raise PsbtFinalizeError(f"input {i}: no signature for the P2WPKH key")
                items = [match[0][1], match[0][0]]
            elif info.type is ScriptType.P2WSH:
                ws = scope.witness_script.data
                try:
                    m, keys = parse_multisig(ws)
                except UnsupportedScriptError:
                    raise PsbtFinalizeError(f"input {i}: witness script is not multisig") from None
                ordered = [sigs[k] for k in keys if k in sigs][:m]
                if len(ordered) < m:
                    raise PsbtFinalizeError(
                        f"input {i}: {len(ordered)} of {m} required signatures present"
                    )
                items = [b"", *ordered, ws]  # empty item: CHECKMULTISIG's dummy (NULLDUMMY)
            else:
                raise PsbtFinalizeError(f"input {i}: unsupported script type")
            scope.final_scriptwitness = _EmbitWitness(items)
            # BIP174: clear everything but the UTXO and unknowns once final
            scope.partial_sigs.clear()
            scope.bip32_derivations.clear()
            scope.witness_script = None
            scope.sighash_type = None

    @property
    def is_complete(self) -> bool:
        return all(s.final_scriptwitness is not None for s in self._p.inputs)

    def extract(self) -> bytes:
        """Network-serialized signed transaction; every input must be finalized."""
        if not self.is_complete:
            raise PsbtFinalizeError("PSBT is not fully finalized")
        tx = self._p.tx
        for vin, scope in zip(tx.vin, self._p.inputs, strict=True):
            vin.witness = scope.final_scriptwitness
        return bytes(tx.serialize())

    def extract_hex(self) -> str:
        return self.extract().hex()


def combine(psbts: Sequence[Psbt]) -> Psbt:
    if not psbts:
        raise PsbtCombineError("nothing to combine")
    return psbts[0].combine(*psbts[1:])
