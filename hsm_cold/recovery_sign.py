"""Signatures at the cold console for recoveries that custody did not build (docs/recovery.md).

- `sign-recovery`: the cold cosigner's signatures on a PSBT spending the account's hot 2-of-3
  (with the recovery key's, that is two of three: the hot HSM is not needed).
- `sweep`: the cold receiving wallet's coins to an address the officer types at the console.

Both check every input against the account's own wallet (derived here), refuse a fee above the
cold HSM's fee policy, show what they sign, and sign only after the officer confirms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsm_cold import accounts
from hsm_cold.accounts import AccountFacts, SeedPurpose
from hsm_cold.console import Console
from hsm_cold.cosign import FeePolicy
from hsm_cold.errors import NotConfirmed, RecoveryPsbtRefused, UnknownAccount
from hsm_cold.keystore import ColdKeystore
from hsm_cold.store import AccountRecord, ColdStore
from wallet_core import signatures
from wallet_core.addresses import address_to_script
from wallet_core.bip32 import ExtendedKey
from wallet_core.errors import PsbtError, WalletError
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.recovery import (
    RecoveryCheckError,
    WalletInput,
    cold_wallet_inputs,
    hot_wallet_inputs,
    summary,
)

log = logging.getLogger(__name__)

MAX_PSBT_FILE = 4 * 1024 * 1024


def read_psbt(path: Path) -> Psbt:
    """A PSBT file: base64 text (as `cc-recover` writes it) or raw BIP174 bytes."""
    try:
        raw = path.read_bytes()[: MAX_PSBT_FILE + 1]
    except OSError as exc:
        raise RecoveryPsbtRefused(f"{path}: cannot be read ({exc})") from None
    if len(raw) > MAX_PSBT_FILE:
        raise RecoveryPsbtRefused(f"{path}: too large for a PSBT")
    try:
        if raw.startswith(b"psbt\xff"):
            return Psbt.from_bytes(raw)
        return Psbt.from_base64(raw.decode("ascii", errors="replace"))
    except PsbtError as exc:
        raise RecoveryPsbtRefused(f"{path}: {exc.message}") from None


def _record(store: ColdStore, account: int) -> AccountRecord:
    rec = store.get_account(account)
    if rec is None:
        raise UnknownAccount(f"account {account} is not provisioned on the cold HSM")
    return rec


def _check_fee(psbt: Psbt, policy: FeePolicy) -> None:
    try:
        fee = psbt.fee()
    except PsbtError as exc:
        raise RecoveryPsbtRefused(exc.message) from None
    if not 0 < fee <= policy.max_fee_sat:
        raise RecoveryPsbtRefused(
            f"fee {fee} sat is outside the cold HSM's policy (1 to {policy.max_fee_sat} sat)"
        )


def _checked_inputs(
    find: Callable[[], list[WalletInput]], account: int, psbt: Psbt, policy: FeePolicy
) -> list[WalletInput]:
    """The wallet's inputs as `find` reads them from the recovery PSBT, and its fee within the
    cold HSM's policy; anything else refuses the PSBT."""
    try:
        inputs = find()
    except RecoveryCheckError as exc:
        raise RecoveryPsbtRefused(f"account {account}: {exc}") from None
    _check_fee(psbt, policy)
    return inputs


def _show(console: Console, title: str, lines: list[str], rec: AccountRecord) -> None:
    console.say(title)
    for line in lines:
        console.say(line)
    if rec.frozen:
        console.say(f"  note: account {rec.account} is frozen ({rec.frozen_reason})")
    console.say("  (input amounts verified from their previous transactions)")


@dataclass(frozen=True)
class ConsoleSigning:
    """What a signing at the cold console works with: the opened token and state, the fee
    policy, the network, and the officer at the console."""

    keystore: ColdKeystore
    store: ColdStore
    policy: FeePolicy
    network: Network
    console: Console


def sign_hot_recovery(at: ConsoleSigning, account: int, psbt: Psbt) -> tuple[Psbt, int]:
    """The cold cosigner's signature on every input of the account's hot wallet."""
    keystore, policy, network, console = at.keystore, at.policy, at.network, at.console
    rec = _record(at.store, account)
    facts = AccountFacts.of(rec)
    with accounts.opened_root(keystore, rec, SeedPurpose.COSIGNER) as root:
        cosigner = accounts.cosigner_key(root, network)
        node = accounts.cosigner_node(root, network)
    wallet = accounts.hot_wallet(facts, cosigner)
    inputs = _checked_inputs(lambda: hot_wallet_inputs(psbt, wallet), account, psbt, policy)
    _show(console, f"Hot wallet recovery, account {account}:", summary(psbt, inputs, network), rec)
    console.confirm("Sign with the cold cosigner key?")
    signed = _sign(psbt, inputs, node)
    log.warning("account %d: recovery PSBT %s co-signed at the console", account, psbt.txid)
    return psbt, signed


def sweep_receiving(at: ConsoleSigning, account: int, psbt: Psbt) -> tuple[str, str]:
    """Sign and finalize a sweep of the cold receiving wallet to the address typed here."""
    keystore, policy, network, console = at.keystore, at.policy, at.network, at.console
    rec = _record(at.store, account)
    with accounts.opened_root(keystore, rec, SeedPurpose.RECEIVING) as root:
        wallet = accounts.receiving_wallet(root, network)
        node = accounts.receiving_account_node(root, network)
    inputs = _checked_inputs(lambda: cold_wallet_inputs(psbt, wallet), account, psbt, policy)
    outputs = psbt.outputs
    if len(outputs) != 1:
        raise RecoveryPsbtRefused("a sweep pays exactly one output, to the typed address")
    _show(console, f"Cold receiving sweep, account {account}:", summary(psbt, inputs, network), rec)
    typed = console.ask("Type the destination address: ")
    try:
        script = address_to_script((typed or "").strip(), network)
    except WalletError as exc:
        raise NotConfirmed(
            f"the typed address is not a {network.value} address: {exc.message}"
        ) from None
    if script != outputs[0].script_pubkey:
        raise NotConfirmed("the typed address is not the PSBT's destination; nothing signed")
    console.confirm("Sign and finalize the sweep?")
    _sign(psbt, inputs, node)
    try:
        psbt.finalize()
        tx = psbt.extract_hex()
    except PsbtError as exc:
        raise RecoveryPsbtRefused(f"sweep: {exc.message}") from None
    log.warning("account %d: sweep %s signed at the console", account, psbt.txid)
    return tx, psbt.txid


def _sign(psbt: Psbt, inputs: list[WalletInput], node: ExtendedKey) -> int:
    try:
        for w in inputs:
            child = node.child(w.chain).child(w.index)
            der = signatures.sign_digest(child.private_key, psbt.sighash(w.index_in_tx))
            psbt.add_signature(w.index_in_tx, child.public_key, der)
    except PsbtError as exc:
        raise RecoveryPsbtRefused(f"signing: {exc.message}") from None
    return len(inputs)
