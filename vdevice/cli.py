"""`vdevice`: the customer's phone (the chaincloud-v app), emulated as its own process.

vdevice init [--dir D]                  identity key; prints its public key (hex) and fingerprint
vdevice provision --bundle FILE|- --cold-fingerprint F [--force] [--dir D]
vdevice run [--dir D]                   the loop (supervised by `custody up`)
vdevice status [--json] [--dir D]       channel, last batch, last send, policies, alerts
vdevice policy [set --max-send-sat N ...] the spending policy; `set` signs a change for the cold HSM
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cc_common import fingerprint, policy_options
from cc_common.cli import add_dir_argument, config_from_args, run, set_role
from cc_common.logs import setup_logging
from cc_common.process import install_stop_handlers
from cc_common.spending_policy import PolicyFormatError
from vdevice import loop, owner_auth, policy_changes
from vdevice.errors import FingerprintMismatch, ProvisioningError
from vdevice.settings import (
    DB_FILENAME,
    Policies,
    load_settings,
    owner_code_period,
    spending_policy,
    state_dir,
)
from vdevice.state import Provisioning, State
from vdevice.status import process_running, render, snapshot


def _state(args: argparse.Namespace) -> State:
    return State(state_dir(config_from_args(args)) / DB_FILENAME)


def cmd_init(args: argparse.Namespace) -> str:
    """Generate the identity key on the phone (idempotent); print the public key (for
    `custody account create`) and its fingerprint (read to the cold HSM's officer, who types
    it into `hsm-cold confirm-account`)."""
    state = _state(args)
    try:
        pub, _created = state.init_identity()
    finally:
        state.close()
    return f"{pub.hex()}\nfingerprint {fingerprint.fingerprint(pub)}"


def _read_bundle(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"cannot read the bundle: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ProvisioningError("the bundle is not JSON") from None


def cmd_provision(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    v = config.section("vdevice")
    owner = v.str("owner_number", "") or config.section("phones").str("owner", "")
    if fingerprint.normalise(args.cold_fingerprint) is None:
        raise FingerprintMismatch(
            "--cold-fingerprint must be five groups of five hex digits, as `hsm-cold identity`"
            " prints it"
        )
    prov = Provisioning.from_bundle(_read_bundle(args.bundle), owner)
    if not fingerprint.matches(prov.cold_identity, args.cold_fingerprint):
        raise FingerprintMismatch(
            "the bundle's cold HSM identity key does not match the fingerprint read at the cold"
            f" console (the bundle's is {fingerprint.fingerprint(prov.cold_identity)}): refused;"
            " the bundle did not come from our cold HSM"
        )
    state = State(state_dir(config) / DB_FILENAME)
    try:
        state.identity_pub()
        changed = state.provision(prov, force=args.force)
        enrolment = None
        if changed or not owner_auth.has_secret(state):
            enrolment = owner_auth.enrol(state, prov.account_id, owner_code_period(config))
    finally:
        state.close()
    what = "provisioned" if changed else "already provisioned with this bundle"
    lines = [f"{what}: account {prov.account_id}, cold numbers {', '.join(prov.cold_numbers)}"]
    if enrolment is None:
        lines.append("the owner's authenticator is already enrolled (not shown again)")
    else:
        lines += [
            "the owner's authenticator (shown once; scan it, then clear the screen):",
            enrolment.uri,
            enrolment.qr,
        ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    settings = load_settings(config)
    setup_logging("vdevice", config.log_dir, fmt=config.log_format)
    state = State(settings.db_path)
    try:
        if not settings.wait_for_provisioning:
            state.identity_pub()  # NotInitialised / NotProvisioned: a clear one-line refusal
            state.provisioning()
        stop = install_stop_handlers()
        return loop.run(state, settings, stop)
    finally:
        state.close()


def cmd_status(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    try:
        policies = load_settings(config).policies
    except Exception:  # noqa: BLE001 (show the state even with a broken config)
        policies = Policies()
    state = _state(args)
    try:
        data = snapshot(state, policies, process_running=process_running(config.run_dir))
    finally:
        state.close()
    return json.dumps(data, indent=2, sort_keys=True) if args.json else render(data)


def cmd_policy(args: argparse.Namespace) -> str:
    """Show the phone's policy; with `set`, sign a change the loop texts to the cold HSM."""
    config = config_from_args(args)
    configured = spending_policy(config)
    state = State(state_dir(config) / DB_FILENAME)
    try:
        policy = policy_changes.current(state, configured)
        if args.action != "set":
            change = policy_changes.describe(policy_changes.last_change(state))
            return f"{policy.summary()}\nlast change: {change}"
        changes = policy_options.policy_changes(args)
        if "whitelist" in changes:  # `--whitelist ''` clears the list
            changes["whitelist"] = tuple(a for a in changes["whitelist"] if a)
        if not changes:
            raise ProvisioningError("nothing to change: give at least one option")
        try:
            new = dataclasses.replace(policy, **changes)
        except PolicyFormatError as exc:
            raise ProvisioningError(exc.message) from None
        _, at_once = policy_changes.request(state, state.provisioning().account_id, configured, new)
    finally:
        state.close()
    when = (
        "applies at once"
        if at_once
        else f"loosens: applies after {policy.loosen_delay}s, once the cold HSM says so"
    )
    return f"signed change queued for the cold HSM ({when}): {new.summary()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdevice", description=__doc__.splitlines()[0])
    set_role(parser, "vdevice")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="generate the phone's identity key; print its public key")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("provision", help="load the bundle of `custody account create`")
    p.add_argument("--bundle", required=True, metavar="FILE", help="JSON file, or - for stdin")
    p.add_argument(
        "--cold-fingerprint",
        required=True,
        metavar="FINGERPRINT",
        help="the cold HSM's identity fingerprint, read out at the cold console (`hsm-cold"
        " identity`), never taken from the bundle",
    )
    p.add_argument("--force", action="store_true", help="replace a different provisioning")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_provision)

    p = sub.add_parser("run", help="run the loop (polls the site, SMS channel, sends)")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("policy", help="the spending policy; `set` changes it (signed)")
    p.add_argument("action", nargs="?", choices=("show", "set"), default="show", help="show/set")
    policy_options.add_policy_options(
        p, "the only addresses sends may pay (repeat; --whitelist '' clears it)"
    )
    add_dir_argument(p)
    p.set_defaults(handler=cmd_policy)

    p = sub.add_parser("status", help="the state at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
