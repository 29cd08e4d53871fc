"""The spending policy's command-line options, declared once for the two places that set a
policy: the cold console (`hsm-cold confirm-account`) and the owner's phone (`vdevice policy
set`). Both read the same `SpendingPolicy` fields, so the option names, types and help must not
drift apart.
"""

from __future__ import annotations

import argparse
from typing import Any

from cc_common.cli import int_at_least

# The integer limits of `SpendingPolicy`, each with its help text.
POLICY_LIMITS = (
    ("max_send_sat", "most one send may pay (sat)"),
    ("max_daily_sat", "most paid per rolling 24 h (sat)"),
    ("max_sends_per_hour", "sends per rolling hour"),
    ("approval_above_sat", "sends above this wait for the owner's approval (sat)"),
    ("loosen_delay", "seconds a loosening waits (default 86400)"),
)


# A policy has no "no limit" value: every limit is a positive whole number.
positive_int = int_at_least(1, "a positive whole number")


def add_policy_options(parser: argparse.ArgumentParser, whitelist_help: str) -> None:
    """The policy fields as options, each absent (None) unless given."""
    for name, text in POLICY_LIMITS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, help=text)
    parser.add_argument(
        "--approve-new-destinations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sends to an address never paid before wait for the owner",
    )
    parser.add_argument("--whitelist", action="append", metavar="ADDRESS", help=whitelist_help)


def policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The policy fields the options gave, for `dataclasses.replace` on a `SpendingPolicy`; the
    whitelist as given (a tuple)."""
    names = [name for name, _ in POLICY_LIMITS] + ["approve_new_destinations"]
    changes: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.whitelist is not None:
        changes["whitelist"] = tuple(args.whitelist)
    return changes
