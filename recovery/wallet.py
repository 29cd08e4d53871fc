"""The wallets to recover, from the paper recovery export or from descriptors.

The paper export (`account-N-recovery.txt`, written once by the cold HSM) holds the recovery
master key and the hot wallet's receive and change descriptors. Descriptors can also come from
`custody account show` or a cold backup file's public header (`cold_receive_descriptor`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from embit.bip32 import HDKey
from embit.descriptor import Descriptor
from embit.networks import NETWORKS

NETWORK_NAMES = {"mainnet": "main", "main": "main", "testnet": "test", "regtest": "regtest"}


class RecoveryError(Exception):
    """A clear refusal: what was wrong, with nothing half done."""


def network_params(name: str) -> dict:
    try:
        return NETWORKS[NETWORK_NAMES[name]]
    except KeyError:
        raise RecoveryError(f"unknown network {name!r} (mainnet, testnet, regtest)") from None


@dataclass(frozen=True)
class WalletBranch:
    """One descriptor with a wildcard: a receive or change chain of a wallet."""

    name: str
    text: str
    descriptor: Descriptor

    @classmethod
    def parse(cls, name: str, text: str) -> WalletBranch:
        try:
            desc = Descriptor.from_string(text.strip())
        except Exception as exc:  # noqa: BLE001 (embit raises several unrelated types)
            raise RecoveryError(f"{name}: not a descriptor ({exc})") from None
        if not desc.is_wildcard:
            raise RecoveryError(f"{name}: a descriptor with a /* wildcard is needed")
        return cls(name, text.strip(), desc)

    def script_at(self, index: int) -> bytes:
        return self.descriptor.derive(index).script_pubkey().data


@dataclass(frozen=True)
class PaperExport:
    account: int
    network: str
    master_xprv: str
    branches: list[WalletBranch]

    @property
    def root(self) -> HDKey:
        return HDKey.from_string(self.master_xprv)


def read_paper_export(path: Path) -> PaperExport:
    """`key: value` lines; '#' comments. The one file here that holds a private key."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"{path}: cannot be read ({exc})") from None
    fields = {}
    for line in lines:
        if line.strip() and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    try:
        export = PaperExport(
            account=int(fields["account"]),
            network=fields["network"],
            master_xprv=fields["master_xprv"],
            branches=[
                WalletBranch.parse("hot receive", fields["hot_wallet_receive"]),
                WalletBranch.parse("hot change", fields["hot_wallet_change"]),
            ],
        )
        export.root  # noqa: B018 (parse check)
    except KeyError as exc:
        raise RecoveryError(f"{path}: not a recovery export (no {exc.args[0]!r} line)") from None
    except ValueError as exc:
        raise RecoveryError(f"{path}: malformed recovery export ({exc})") from None
    network_params(export.network)
    return export


def branches_from_backup_header(path: Path) -> list[WalletBranch]:
    """The cold receiving wallet's chains from a cold backup file's public header."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))["header"]
        receive = header["cold_receive_descriptor"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecoveryError(f"{path}: not an account backup file ({exc})") from None
    return change_pair("cold", receive)


def change_pair(name: str, receive_text: str) -> list[WalletBranch]:
    """A receive descriptor (`.../0/*`) and its change chain (`.../1/*`)."""
    base = receive_text.split("#", 1)[0]
    if "/0/*" not in base:
        raise RecoveryError(f"{name}: expected a receive descriptor ending in /0/*")
    return [
        WalletBranch.parse(f"{name} receive", base),
        WalletBranch.parse(f"{name} change", base.replace("/0/*", "/1/*")),
    ]
