"""`hsm-hot sign-recovery`: the hot key's signatures on a hot-wallet recovery PSBT.

For the loss of the cold HSM (or of custody): the recovery key from the paper export and the
hot key are two of the wallet's three. The operator runs it on the hot HSM host; it checks
every input against the account's own 2-of-3 (derived here), shows the outputs and the fee,
and signs only after the operator types `yes` (docs/recovery.md).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.config import Section
from cc_common.errors import ConfigError
from cc_common.token import HsmToken
from hsm_hot.audit import AuditLog
from hsm_hot.errors import HotHsmError, NotConfirmed, RecoveryPsbtRefused, UnknownAccount
from hsm_hot.state import HotState
from wallet_core.errors import PsbtError
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.recovery import RecoveryCheckError, hot_wallet_inputs, summary

MAX_PSBT_FILE = 4 * 1024 * 1024


def _read_line(prompt: str, *, secret: bool) -> str:
    if secret and sys.stdin.isatty():
        return getpass.getpass(prompt)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    return sys.stdin.readline().rstrip("\r\n")


def read_psbt(path: Path) -> Psbt:
    try:
        raw = path.read_bytes()[: MAX_PSBT_FILE + 1]
        if len(raw) > MAX_PSBT_FILE:
            raise RecoveryPsbtRefused(f"{path}: too large for a PSBT")
        if raw.startswith(b"psbt\xff"):
            return Psbt.from_bytes(raw)
        return Psbt.from_base64(raw.decode("ascii", errors="replace"))
    except OSError as exc:
        raise RecoveryPsbtRefused(f"{path}: cannot be read ({exc})") from None
    except PsbtError as exc:
        raise RecoveryPsbtRefused(f"{path}: {exc.message}") from None


def sign_recovery(
    token: HsmToken, state: HotState, account: int, psbt: Psbt, network: Network
) -> tuple[Psbt, int]:
    acct = state.account(account)
    if acct is None:
        raise UnknownAccount(f"account {account} is not provisioned on the hot HSM")
    try:
        inputs = hot_wallet_inputs(psbt, state.wallet(acct))
    except RecoveryCheckError as exc:
        raise RecoveryPsbtRefused(f"account {account}: {exc}") from None
    print(f"Hot wallet recovery, account {account}:")
    for line in summary(psbt, inputs, network):
        print(line)
    answer = _read_line("Sign with the hot key? Type 'yes' to go on: ", secret=False)
    if answer.strip().lower() != "yes":
        raise NotConfirmed("not confirmed; nothing was signed")
    try:
        for w in inputs:
            der = token.keys.sign_digest(acct.hot_label, psbt.sighash(w.index_in_tx))
            psbt.add_signature(w.index_in_tx, acct.hot_pubkey, der)
    except PsbtError as exc:
        raise RecoveryPsbtRefused(f"signing: {exc.message}") from None
    return psbt, len(inputs)


def cmd_sign_recovery(args: argparse.Namespace) -> str:
    from hsm_hot.cli import HotPaths, _network  # noqa: PLC0415 (cli imports this module)

    config = config_from_args(args)
    section = config.section("hsm_hot")
    pin = _read_line("hot token user PIN: ", secret=True)
    if not pin:
        raise ConfigError("no PIN given")
    psbt = read_psbt(args.psbt)
    paths = HotPaths.of(section)
    state = HotState(paths.state_dir)
    try:
        pinned = Section(section.name, {**section.values, "user_pin": pin}, section.data_dir)
        del pin
        with HsmToken.open(pinned) as token:
            try:
                signed, count = sign_recovery(token, state, args.account, psbt, _network(config))
            except HotHsmError as exc:
                raise type(exc)(f"[{int(exc.code)}] {exc.message}") from None
    finally:
        state.close()
    audit = AuditLog(paths.audit)
    try:
        audit.record("sign_recovery", account=args.account, txid=signed.txid, inputs=count)
    finally:
        audit.close()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(signed.to_base64() + "\n")
    return f"{count} input(s) signed with the hot key; PSBT written to {args.out}"


def add_command(sub: Any) -> None:
    p = sub.add_parser("sign-recovery", help="sign a hot-wallet recovery PSBT (PIN from stdin)")
    p.add_argument("account", type=int, help="the account number")
    p.add_argument("psbt", type=Path, help="the PSBT file from cc-recover")
    p.add_argument("--out", type=Path, required=True, help="where to write the signed PSBT")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_sign_recovery)
