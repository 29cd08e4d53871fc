"""The cold console's commands for out-of-band provisioning and the spending policy.

hsm-cold identity                                   the identity fingerprint, read out loud
hsm-cold confirm-account N --vdevice-fingerprint F  a pending account becomes usable
hsm-cold policy                                     policies in force and loosenings waiting
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from dataclasses import replace
from typing import Any

from cc_common import fingerprint
from cc_common.cli import add_dir_argument, config_from_args, render_table
from cc_common.config import Config, Section
from cc_common.errors import ConfigError
from cc_common.policy_options import add_policy_options, policy_changes
from cc_common.spending_policy import (
    DEFAULT_POLICY,
    MAX_LOOSEN_DELAY,
    MIN_LOOSEN_DELAY,
    SHORTEST_LOOSEN_DELAY,
    PolicyFormatError,
    SpendingPolicy,
)
from cc_common.token import HsmToken
from hsm_cold.keystore import ColdKeystore
from hsm_cold.policy import ColdPolicies, account_or_refuse
from hsm_cold.store import ColdStore

STATE_DB = "cold.db"


def defaults(config: Config) -> SpendingPolicy:
    """`[hsm_cold.policy]` over the documented defaults (a missing table: the defaults)."""
    if not config.has_section("hsm_cold.policy"):
        return DEFAULT_POLICY
    try:
        return SpendingPolicy.from_mapping(config.section("hsm_cold.policy").values, DEFAULT_POLICY)
    except (PolicyFormatError, TypeError) as exc:
        raise ConfigError(f"config: [hsm_cold.policy]: {exc}") from None


def min_loosen_delay(config: Config) -> int:
    """`[hsm_cold] min_loosen_delay`: the shortest loosening delay this cold HSM accepts."""
    value = config.section("hsm_cold").int("min_loosen_delay", MIN_LOOSEN_DELAY)
    if not SHORTEST_LOOSEN_DELAY <= value <= MAX_LOOSEN_DELAY:
        raise ConfigError(
            f"config: [hsm_cold] min_loosen_delay must be {SHORTEST_LOOSEN_DELAY}.."
            f"{MAX_LOOSEN_DELAY} seconds"
        )
    return value


def _store(config: Config) -> ColdStore:
    return ColdStore(config.section("hsm_cold").path("state_dir") / STATE_DB)


def _policies(store: ColdStore, config: Config) -> ColdPolicies:
    return ColdPolicies(
        store,
        defaults(config),
        secrets.token_bytes,
        store.add_alert,
        min_delay=min_loosen_delay(config),
    )


def cmd_identity(args: argparse.Namespace) -> dict[str, Any] | str:
    """The fingerprint the operator reads to the customer, who types it into `vdevice
    provision --cold-fingerprint`: custody never carries it."""
    section = _section(args)
    token = HsmToken.open(section)
    store = _store(config_from_args(args))
    try:
        pub = ColdKeystore(token, store).identity_pubkey
    finally:
        store.close()
        token.close()
    if args.json:
        return {"fingerprint": fingerprint.fingerprint(pub), "identity_pubkey": pub.hex()}
    return fingerprint.fingerprint(pub)


def _section(args: argparse.Namespace) -> Section:
    return config_from_args(args).section("hsm_cold")


def _read_pin(args: argparse.Namespace) -> str:
    pin = (
        sys.stdin.readline().rstrip("\r\n")
        if args.pin_stdin
        else getpass.getpass("cold token user PIN: ")
    )
    if not pin:
        raise ConfigError("no PIN given")
    return pin


def _chosen_policy(args: argparse.Namespace, base: SpendingPolicy) -> SpendingPolicy:
    changes = policy_changes(args)
    try:
        return replace(base, **changes)
    except PolicyFormatError as exc:
        raise ConfigError(exc.message) from None


def cmd_confirm(args: argparse.Namespace) -> str:
    """At the cold console, with the token's PIN: the typed fingerprint (from the customer's
    phone) must be the V-device key custody delivered; then the account gets its policy."""
    config = config_from_args(args)
    section = config.section("hsm_cold")
    if fingerprint.normalise(args.vdevice_fingerprint) is None:
        raise ConfigError(
            "--vdevice-fingerprint must be five groups of five hex digits, as `vdevice init`"
            " prints it"
        )
    pin = _read_pin(args)
    HsmToken.open(
        Section(section.name, {**section.values, "user_pin": pin}, section.data_dir)
    ).close()
    del pin
    store = _store(config)
    try:
        policies = _policies(store, config)
        rec = account_or_refuse(store, args.account)
        policy = policies.confirm(
            rec, args.vdevice_fingerprint, _chosen_policy(args, policies.defaults)
        )
    finally:
        store.close()
    return f"account {args.account} confirmed; policy: {policy.summary()}"


def cmd_policy(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    store = _store(config)
    try:
        policies = _policies(store, config)
        rows = [
            (r.account, r.vdevice_fingerprint, SpendingPolicy.from_text(r.policy).summary())
            for r in policies.rows.all_rows()
        ]
        waiting = [
            (c.id, c.account, SpendingPolicy.from_text(c.policy).summary(), int(c.applies_at))
            for c in policies.pending_changes()
        ]
        pending = [a for a, _, _ in store.list_accounts() if policies.rows.get(a) is None]
    finally:
        store.close()
    return "\n".join(
        (
            render_table(("account", "V-device fingerprint", "policy in force"), rows),
            "",
            "loosenings waiting (the owner can cancel them):",
            render_table(("id", "account", "new policy", "applies at (unix)"), waiting),
            "",
            "accounts pending confirmation: " + (", ".join(map(str, pending)) or "none"),
        )
    )


def add_commands(sub: Any) -> None:
    p = sub.add_parser("identity", help="print the identity fingerprint (read it to the owner)")
    p.add_argument("--json", action="store_true", help="also the public key, as JSON")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_identity)

    p = sub.add_parser("confirm-account", help="confirm a pending account at the console")
    p.add_argument("account", type=int, help="the account number custody created")
    p.add_argument(
        "--vdevice-fingerprint",
        required=True,
        help="the fingerprint `vdevice init` showed on the customer's phone",
    )
    p.add_argument("--pin-stdin", action="store_true", help="read the user PIN from stdin")
    add_policy_options(p, "the only addresses sends may pay (repeat the option)")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_confirm)

    p = sub.add_parser("policy", help="spending policies, waiting loosenings, pending accounts")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_policy)
