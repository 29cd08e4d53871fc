"""Checks an HSM makes before it signs a recovery PSBT that no custody process built.

A recovery PSBT (from the standalone `cc-recover` tool) spends the account's own coins to an
address an officer names. Each input must be one of the account's own scripts at the position
its key origins claim, derived here, and carry its previous transaction, which must hash to the
spent txid and pay exactly the stated amount and script (so the fee shown is the real one);
anything else is refused before a signature is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallet_core.addresses import script_to_address
from wallet_core.bip32 import HARDENED
from wallet_core.errors import PsbtError, WalletError
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.wallets import CHANGE, RECEIVE, AccountKey, ColdWallet, HotWallet, KeyOrigin

MAX_RECOVERY_INPUTS = 2000


class RecoveryCheckError(ValueError):
    """Why a recovery PSBT is refused (the HSM turns it into its own numbered error)."""


@dataclass(frozen=True)
class WalletInput:
    index_in_tx: int
    chain: int
    index: int
    value: int


def _position(origin: KeyOrigin, account: AccountKey) -> tuple[int, int] | None:
    """(chain, index) when `origin` is a child of `account`, else None."""
    base = account.path
    if origin.fingerprint != account.fingerprint or origin.path[: len(base)] != base:
        return None
    rest = origin.path[len(base) :]
    if len(rest) != 2 or rest[0] not in (RECEIVE, CHANGE) or rest[1] >= HARDENED:
        return None
    return rest[0], rest[1]


def _claimed_position(psbt: Psbt, i: int, keys: list[AccountKey]) -> tuple[int, int]:
    for origin in psbt.input_origins(i).values():
        for key in keys:
            pos = _position(origin, key)
            if pos is not None:
                return pos
    raise RecoveryCheckError(f"input {i} names no key origin of this account's wallet")


def _check_amount(psbt: Psbt, i: int) -> None:
    """The input's amount and script from its previous transaction, hash-checked (invariant 8)."""
    raw = psbt.input_prev_tx(i)
    if raw is None:
        raise RecoveryCheckError(
            f"input {i} carries no previous transaction: its amount cannot be verified"
        )
    psbt.set_prev_tx(i, raw)  # hashes to the spent txid; its output is the witness UTXO


def _check_count(psbt: Psbt) -> None:
    if not 0 < psbt.input_count <= MAX_RECOVERY_INPUTS:
        raise RecoveryCheckError(f"a recovery spends 1 to {MAX_RECOVERY_INPUTS} inputs")


def hot_wallet_inputs(psbt: Psbt, wallet: HotWallet) -> list[WalletInput]:
    """Every input is the hot wallet's own 2-of-3 at its claimed position."""
    _check_count(psbt)
    keys = [c for c in wallet.cosigners if isinstance(c, AccountKey)]
    found = []
    try:
        for i in range(psbt.input_count):
            chain, index = _claimed_position(psbt, i, keys)
            if psbt.input_script_pubkey(i) != wallet.script_pubkey(index, chain):
                raise RecoveryCheckError(f"input {i} is not the wallet's address {chain}/{index}")
            if psbt.input_witness_script(i) != wallet.witness_script(index, chain):
                raise RecoveryCheckError(f"input {i}: witness script is not the wallet's")
            _check_amount(psbt, i)
            found.append(WalletInput(i, chain, index, psbt.input_value(i)))
    except (PsbtError, WalletError) as exc:
        raise RecoveryCheckError(f"malformed recovery PSBT: {exc.message}") from None
    return found


def cold_wallet_inputs(psbt: Psbt, wallet: ColdWallet) -> list[WalletInput]:
    """Every input is the cold receiving wallet's own P2WPKH at its claimed position."""
    _check_count(psbt)
    found = []
    try:
        for i in range(psbt.input_count):
            chain, index = _claimed_position(psbt, i, [wallet.account])
            if psbt.input_script_pubkey(i) != wallet.script_pubkey(index, chain):
                raise RecoveryCheckError(f"input {i} is not the wallet's address {chain}/{index}")
            _check_amount(psbt, i)
            found.append(WalletInput(i, chain, index, psbt.input_value(i)))
    except (PsbtError, WalletError) as exc:
        raise RecoveryCheckError(f"malformed recovery PSBT: {exc.message}") from None
    return found


def summary(psbt: Psbt, inputs: list[WalletInput], network: Network) -> list[str]:
    """What the officer reads before confirming: every output, the total and the fee."""
    total = sum(w.value for w in inputs)
    lines = [f"spends {len(inputs)} input(s) of this account, {total} sat in all"]
    for n, out in enumerate(psbt.outputs):
        try:
            address = script_to_address(out.script_pubkey, network)
        except WalletError:
            address = f"script {out.script_pubkey.hex()}"
        lines.append(f"  output {n}: {out.value} sat to {address}")
    lines.append(f"  fee: {psbt.fee()} sat")
    return lines
