"""The cold console's disaster-recovery commands (docs/recovery.md).

hsm-cold backup verify FILE...    which HSM/account/backup key a file belongs to, and intact
hsm-cold restore --from DIR       a fresh token from M shares (typed) and the backup files
hsm-cold sign-recovery N PSBT     the cold cosigner's signatures on a hot-wallet recovery PSBT
hsm-cold sweep N PSBT             the cold receiving wallet to an address typed at the console
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.errors import ConfigError
from cc_common.token import HsmToken
from hsm_cold.backup import describe, read_backup_file, write_private
from hsm_cold.console import Console, read_drill_share, read_shares
from hsm_cold.errors import ColdHsmError
from hsm_cold.recovery_sign import ConsoleSigning, read_psbt, sign_hot_recovery, sweep_receiving
from hsm_cold.restore import BackupSettings, backup_files_in, load_backup_set, restore
from wallet_core.psbt import Psbt

T = TypeVar("T")


def _coded(handler: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    """Refusals shown with their stable code, for the officer's procedure sheet."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> Any:
        try:
            return handler(args)
        except ColdHsmError as exc:
            raise type(exc)(f"[{int(exc.code)}] {exc.message}") from None

    return wrapped


def _cli() -> Any:
    from hsm_cold import cli  # noqa: PLC0415 (cli imports this module to register commands)

    return cli


def cmd_backup_verify(args: argparse.Namespace) -> str:
    """Signature and format of each file: no shares, no token needed."""
    out, failed = [], list[ColdHsmError]()
    for path in args.files:
        try:
            bf = read_backup_file(path)
            bf.check_signature(str(path))
            info = {"file": str(path), "ok": True, **describe(bf)}
        except ColdHsmError as exc:
            failed.append(exc)
            info = {"file": str(path), "ok": False, "code": int(exc.code), "error": exc.message}
        out.append(info)
    text = "\n".join(json.dumps(i, sort_keys=True) for i in out)
    if failed:  # the first refusal's class and code, every file's verdict in the message
        raise type(failed[0])(f"{len(failed)} of {len(out)} file(s) refused:\n{text}")
    return text


def cmd_restore(args: argparse.Namespace) -> str:
    cli = _cli()
    config = config_from_args(args)
    section = cli._section(config)
    paths = cli.ColdPaths.of(section)
    files = [*args.files, *(backup_files_in(args.from_dir) if args.from_dir else [])]
    if not files:
        raise ConfigError("no backup files: name them, or give --from DIR")
    bset = load_backup_set(files)  # parsed and signature-checked before any share is typed
    console = Console()
    console.say(
        f"Restoring cold HSM {bset.identity.identity_pubkey.hex()} (backup key {bset.key_id}),"
        f" {len(bset.accounts)} account(s): {sorted(bset.accounts)}"
    )
    if args.drill_shares:
        drill = BackupSettings.of(section).drill_dir
        shares = [read_drill_share(p, drill) for p in args.drill_shares]
        console.say(f"DRILL MODE: {len(shares)} share(s) read from files")
    else:
        shares = read_shares(console, "Officers: type your shares, one per line.")
    result = restore(
        section,
        paths.store,
        paths.pairing_file,
        paths.export_dir,
        cli._network(config),
        bset,
        shares,
    )
    del shares
    return json.dumps(result, sort_keys=True)


def _at_console(args: argparse.Namespace, sign: Callable[[ConsoleSigning, int, Psbt], T]) -> T:
    """`sign` the PSBT of `args.psbt` for `args.account`, after the officer's PIN (counted
    under the retry limit) opened the token."""
    cli = _cli()
    config = config_from_args(args)
    section = cli._section(config)
    pin = cli._read_pin(args)
    HsmToken.open(cli._with_pin(section, pin)).close()  # the officer's PIN, under the limit
    del pin
    psbt = read_psbt(args.psbt)
    with cli._opened(section) as (_, store, keystore):
        at = ConsoleSigning(keystore, store, cli._policy(section), cli._network(config), Console())
        return sign(at, args.account, psbt)


def cmd_sign_recovery(args: argparse.Namespace) -> str:
    signed, count = _at_console(args, sign_hot_recovery)
    write_private(args.out, signed.to_base64() + "\n")
    return f"{count} input(s) co-signed; PSBT written to {args.out}"


def cmd_sweep(args: argparse.Namespace) -> str:
    tx, txid = _at_console(args, sweep_receiving)
    if args.out:
        write_private(args.out, tx + "\n")
        return f"sweep {txid} signed; transaction written to {args.out}"
    return tx


def add_commands(sub: Any) -> None:
    """Register the recovery sub-commands on `hsm-cold`'s parser."""
    p = sub.add_parser("backup", help="backup files: verify")
    bsub = p.add_subparsers(dest="backup_command")
    v = bsub.add_parser("verify", help="check backup files (integrity, HSM, account) offline")
    v.add_argument("files", nargs="+", type=Path, help="backup files (*.ccbak)")
    add_dir_argument(v)
    v.set_defaults(handler=_coded(cmd_backup_verify))

    p = sub.add_parser("restore", help="restore onto a fresh token from shares + backup files")
    p.add_argument("files", nargs="*", type=Path, help="backup files (*.ccbak)")
    p.add_argument("--from", dest="from_dir", type=Path, help="a directory of backup files")
    p.add_argument(
        "--drill-shares",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="DRILLS ONLY: read shares from files in [hsm_cold] backup_drill_dir",
    )
    add_dir_argument(p)
    p.set_defaults(handler=_coded(cmd_restore))

    for name, handler, what in (
        ("sign-recovery", cmd_sign_recovery, "co-sign a hot-wallet recovery PSBT"),
        ("sweep", cmd_sweep, "sweep cold receiving funds to an address typed here"),
    ):
        p = sub.add_parser(name, help=what + " (at the cold console)")
        p.add_argument("account", type=int, help="the account number")
        p.add_argument("psbt", type=Path, help="the PSBT file from cc-recover")
        p.add_argument(
            "--out",
            type=Path,
            required=name == "sign-recovery",
            help="where to write the result (signed PSBT / transaction hex)",
        )
        p.add_argument("--pin-stdin", action="store_true", help="read the user PIN from stdin")
        add_dir_argument(p)
        p.set_defaults(handler=_coded(handler))
