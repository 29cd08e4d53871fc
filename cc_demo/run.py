"""The demo's steps in order (STEPS), the runner that prints one line per step, and the CLI.

Step functions live in `cc_demo/scenario.py` (the story) and in one module per topic beside it;
this module only puts them in order, so adding a step is one import and one line here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from cc_common.cli import add_dir_argument, render_table
from cc_common.config import ALL_ROLES, Config, default_data_dir, load_config
from cc_common.errors import CustodyError
from cc_demo import scenario
from cc_demo.history import make_history
from cc_demo.scenario import (
    Context,
    Outcome,
    Step,
    step_account,
    step_attack_batch,
    step_attack_forged_vc,
    step_attack_outputs,
    step_attack_sms,
    step_attack_vtest,
    step_batches,
    step_channel,
    step_deposit,
    step_hot_funding,
    step_status,
    step_withdrawal,
)
from cc_demo.steps_attacks import step_attack_fee_drain
from cc_demo.steps_edges import step_attack_false_failure
from cc_demo.steps_money import (
    step_burst,
    step_consolidate,
    step_deposit_replaced,
    step_fee_bump,
    step_webhook_catch_up,
)
from cc_demo.steps_policy import step_attack_site_drain, step_owner_approval
from cc_demo.steps_recovery import step_recovery_drill
from cc_demo.support import DEMO_CONFIG, StepFailed, StepSkipped, merge_config
from custody import supervisor as sv

__all__ = ["STEPS", "Context", "main", "run_steps"]

MAX_HISTORY = 100_000  # blocks `--history` mines at most

STEPS: tuple[Step, ...] = (
    Step("status", step_status),
    Step("account", step_account),
    Step("channel", step_channel),
    Step("batches", step_batches),
    Step("deposit", step_deposit),
    Step("hot-funding", step_hot_funding),
    Step("withdrawal", step_withdrawal),
    Step("attack-batch", step_attack_batch),
    Step("attack-vtest", step_attack_vtest),
    Step("attack-forged-vc", step_attack_forged_vc),
    Step("attack-outputs", step_attack_outputs),
    Step("attack-fee-drain", step_attack_fee_drain),
    Step("attack-false-failure", step_attack_false_failure),
    Step("attack-sms", step_attack_sms),
    Step("attack-site-drain", step_attack_site_drain),
    Step("owner-approval", step_owner_approval),
    Step("burst", step_burst),
    Step("fee-bump", step_fee_bump),
    Step("consolidate", step_consolidate),
    Step("deposit-replaced", step_deposit_replaced),
    Step("webhook-catch-up", step_webhook_catch_up),
    Step("recovery-drill", step_recovery_drill),  # last: it empties the hot wallet
)


def run_step(ctx: Context, step: Step) -> tuple[str, str, str, float]:
    """Run one step; print its one line; return (name, outcome, detail, seconds)."""
    started = time.monotonic()
    try:
        detail = step.run(ctx)
        outcome = Outcome.PASSED
    except StepSkipped as exc:
        outcome, detail = Outcome.SKIPPED, str(exc)
    except (StepFailed, CustodyError, OSError, ValueError, KeyError, TypeError) as exc:
        outcome, detail = Outcome.FAILED, str(exc) or type(exc).__name__
    elapsed = time.monotonic() - started
    print(f"[{outcome}] {step.name}: {detail} ({elapsed:.1f}s)", flush=True)
    return step.name, outcome, detail, elapsed


def run_steps(
    config: Config, steps: Sequence[Step] = STEPS, ctx: Context | None = None
) -> list[tuple[str, str, str, float]]:
    ctx = ctx or Context(config=config, status=sv.read_status(config))
    return [run_step(ctx, step) for step in steps]


def summary(results: Sequence[tuple[str, str, str, float]]) -> tuple[str, bool]:
    """The summary table, and whether every step passed."""
    rows = [(n, o, f"{t:.1f}", d if len(d) <= 90 else d[:89] + "…") for n, o, d, t in results]
    table = render_table(("STEP", "RESULT", "SECONDS", "WHAT IT PROVED"), rows)
    passed = sum(1 for _, o, _, _ in results if o == Outcome.PASSED)
    failed = sum(1 for _, o, _, _ in results if o == Outcome.FAILED)
    skipped = len(results) - passed - failed
    total = sum(t for *_, t in results)
    line = f"{passed} passed, {failed} failed, {skipped} did not run, in {total:.0f}s"
    return f"{table}\n\n{line}", passed == len(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cc_demo",
        description=scenario.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dir_argument(parser)
    parser.add_argument("--step", action="append", help="run only these steps (repeatable)")
    parser.add_argument(
        "--configure",
        action="store_true",
        help="write the demo's switches into the configuration (before `custody up`) and exit",
    )
    parser.add_argument(
        "--history",
        type=int,
        metavar="BLOCKS",
        help="before `custody up`: give the deployment's node this many blocks of history, "
        "with unrelated payments in them, and exit (the node must not be running)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.dir or default_data_dir(), role=ALL_ROLES)  # every officer
    except CustodyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.configure:
        merge_config(config.data_dir, DEMO_CONFIG)
        print(f"demo switches written to the configuration files in {config.data_dir}")
        return 0
    if args.history is not None:
        if not 0 < args.history <= MAX_HISTORY:
            print(f"error: --history must be between 1 and {MAX_HISTORY}", file=sys.stderr)
            return 2
        try:
            print(make_history(config, args.history))
        except (StepFailed, CustodyError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    unknown = set(args.step or ()) - {s.name for s in STEPS}
    if unknown:
        print(f"error: no step {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    steps = [s for s in STEPS if not args.step or s.name in args.step]
    results = run_steps(config, steps)
    text, ok = summary(results)
    print()
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
