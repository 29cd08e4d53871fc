"""Build, sign and finalize the recovery transaction as a PSBT (BIP174), with embit.

The PSBT carries everything a signer checks: each input's amount and script, the witness
script, and the key origins of every derivable key, so the cold HSM (`hsm-cold sign-recovery`)
or the hot HSM (`hsm-hot sign-recovery`) can derive and compare before it signs.
"""

from __future__ import annotations

import math
from pathlib import Path

from embit.bip32 import HDKey
from embit.finalizer import finalize_psbt
from embit.psbt import PSBT, DerivationPath
from embit.script import Script, address_to_scriptpubkey
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from recovery.chain import FoundUtxo
from recovery.wallet import RecoveryError

SEQUENCE_RBF = 0xFFFFFFFD
DUST_SAT = 546
TX_OVERHEAD_WU = 10 * 4 + 2  # version, locktime, counts; segwit marker and flag
INPUT_BASE_WU = 41 * 4  # outpoint, empty scriptSig, sequence
MAX_SIG = 73  # DER signature + sighash byte, with its length prefix


def _input_weight(script_pubkey: bytes, witness_script: bytes | None) -> int:
    if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":  # P2WPKH
        return INPUT_BASE_WU + 1 + MAX_SIG + 34
    if len(script_pubkey) == 34 and script_pubkey[:2] == b"\x00\x20" and witness_script:
        m = witness_script[0] - 0x50
        ws_len = len(witness_script)
        return INPUT_BASE_WU + 1 + 1 + MAX_SIG * m + 1 + ws_len + (2 if ws_len > 252 else 0)
    raise RecoveryError("only P2WPKH and P2WSH multisig coins can be recovered")


def estimate_fee(utxos: list[FoundUtxo], destination: bytes, fee_rate: float) -> int:
    weight = TX_OVERHEAD_WU + (8 + 1 + len(destination)) * 4
    for u in utxos:
        d = u.branch.descriptor.derive(u.index)
        ws = d.witness_script()
        weight += _input_weight(d.script_pubkey().data, ws.data if ws else None)
    return math.ceil(math.ceil(weight / 4) * fee_rate)


def destination_script(address: str, network: dict) -> bytes:
    try:
        script = address_to_scriptpubkey(address)
    except Exception:  # noqa: BLE001 (embit raises several unrelated types)
        raise RecoveryError(f"--to {address!r} is not a bitcoin address") from None
    if script.address(network) != address:
        raise RecoveryError(f"--to {address!r} is not an address of this network")
    return script.data


def build_psbt(utxos: list[FoundUtxo], destination: bytes, fee_rate: float) -> tuple[PSBT, int]:
    """Everything found to one output; returns the PSBT and its fee."""
    if not utxos:
        raise RecoveryError("nothing to recover: no coins found")
    if not 1 <= fee_rate <= 10_000:
        raise RecoveryError("--fee-rate must be between 1 and 10000 sat/vB")
    fee = estimate_fee(utxos, destination, fee_rate)
    value = sum(u.amount_sat for u in utxos) - fee
    if value < DUST_SAT:
        raise RecoveryError(f"the coins found do not cover the fee ({fee} sat)")
    tx = Transaction(
        version=2,
        vin=[TransactionInput(bytes.fromhex(u.txid), u.vout, sequence=SEQUENCE_RBF) for u in utxos],
        vout=[TransactionOutput(value, Script(destination))],
        locktime=0,
    )
    psbt = PSBT(tx)
    for scope, u in zip(psbt.inputs, utxos, strict=True):
        d = u.branch.descriptor.derive(u.index)
        scope.witness_utxo = TransactionOutput(u.amount_sat, d.script_pubkey())
        scope.non_witness_utxo = _parse_tx(u.prev_tx, u.txid)
        ws = d.witness_script()
        if ws is not None:
            scope.witness_script = ws
        for key in d.keys:
            if key.origin is not None:
                scope.bip32_derivations[key.get_public_key()] = DerivationPath(
                    key.origin.fingerprint, key.origin.derivation
                )
    return psbt, fee


def _parse_tx(raw: bytes, txid: str) -> Transaction:
    try:
        tx = Transaction.parse(raw)
    except Exception:  # noqa: BLE001 (embit raises several unrelated types)
        raise RecoveryError(f"the node's transaction {txid} does not parse") from None
    if tx.txid().hex() != txid:
        raise RecoveryError(f"the node's transaction for {txid} is another one")
    return tx


def read_psbt(path: Path) -> PSBT:
    try:
        return PSBT.from_string(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"{path}: cannot be read ({exc})") from None
    except Exception as exc:  # noqa: BLE001 (embit raises several unrelated types)
        raise RecoveryError(f"{path}: not a PSBT ({exc})") from None


def sign(psbt: PSBT, root: HDKey) -> int:
    count = psbt.sign_with(root, SIGHASH.ALL)
    if count == 0:
        raise RecoveryError("the recovery key signs none of this PSBT's inputs")
    return count


def combine(psbts: list[PSBT]) -> PSBT:
    first = psbts[0]
    for other in psbts[1:]:
        if other.tx.txid() != first.tx.txid():
            raise RecoveryError("the PSBTs are not of the same transaction")
        for a, b in zip(first.inputs, other.inputs, strict=True):
            a.partial_sigs.update(b.partial_sigs)
    return first


def finalize(psbt: PSBT) -> Transaction:
    tx = finalize_psbt(psbt)
    if tx is None:
        missing = [i for i, s in enumerate(psbt.inputs) if len(s.partial_sigs) < 2]
        raise RecoveryError(f"not enough signatures to finalize (inputs {missing[:10]})")
    return tx
