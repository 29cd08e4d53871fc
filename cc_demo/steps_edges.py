"""Demo steps at custody's edges: a hacked custody that reports a genuine send "failed".

The site hears "failed" only on the cold HSM's signed refusal, which closes the send's number
for good, so the attacker's later attempt to have it signed is refused and nothing moves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from cc_demo import scenario as demo
from cc_demo.support import StepFailed, custody_db, mempool, random_address, wait_for
from custody.models import Send, SendStatus

FALSE_FAILURE_SAT = 1_500_000


def newest_send_id(factory: Any) -> int:
    """The id of the newest send in custody's database (0 when there is none)."""
    with factory() as s:
        return int(s.execute(select(Send.id).order_by(Send.id.desc())).scalars().first() or 0)


def wait_posted(factory: Any, account: int, after_id: int, vtest_id: str) -> Send:
    """The send the V-device posts for `vtest_id` (the first one after `after_id`)."""

    def posted() -> Send | None:
        with factory() as s:
            return s.execute(
                select(Send).where(Send.account_id == account, Send.id > after_id)
            ).scalar_one_or_none()

    return wait_for(posted, demo.SEND_TIMEOUT, f"the V-device to post withdrawal {vtest_id}")


def rewrite_send(factory: Any, send_id: int, **values: Any) -> None:
    """What an attacker holding custody's database does to a send's row."""
    with factory() as s, s.begin():
        s.execute(update(Send).where(Send.id == send_id).values(**values))


def wait_refused(factory: Any, send_id: int) -> str:
    """The failure reason once custody's worker finds the send's signing refused."""

    def refused() -> str | None:
        with factory() as s:
            row = s.get(Send, send_id)
            return row.failure_reason if row and row.status is SendStatus.FAILED else None

    return wait_for(refused, demo.SEND_TIMEOUT, "the hacked custody's signing to be refused")


def fake_failure(
    ctx: demo.Context, factory: Any, account: int, payee: str, sat: int, who: str
) -> tuple[str, Send, dict[str, Any]]:
    """The hacked custody's first move, with the worker paused: the site's withdrawal of `sat`
    to `payee` is posted, its send rewritten "failed" before anything signs it; the
    withdrawal id, the send, and the withdrawal as the site finished it."""
    last_id = newest_send_id(factory)
    vtest_id = demo.merchant_withdrawal(ctx, [(payee, sat)])
    send = wait_posted(factory, account, last_id, vtest_id)
    rewrite_send(factory, send.id, status=SendStatus.FAILED, failure_reason=f"made up by {who}")
    return vtest_id, send, demo.wait_site_finished(ctx, vtest_id)


def step_attack_false_failure(ctx: demo.Context) -> str:
    """A hacked custody (database and host) marks a genuine send failed, then wants it signed."""
    account = ctx.need("account_id")
    ctx.need("c_id")
    payee = random_address(ctx.network)
    factory = custody_db(ctx.config)
    pool, height = mempool(ctx.rpc), ctx.rpc.get_block_count()
    with demo.worker_paused(ctx):
        vtest_id, send, w = fake_failure(
            ctx, factory, account, payee, FALSE_FAILURE_SAT, "a hacked custody"
        )
        if w["status"] != "failed":
            raise StepFailed(f"the site shows withdrawal {vtest_id} as {w['status']}")
        statement = demo.send_state(ctx, send.user_tx_no).get("cold_statement") or {}
        if statement.get("state") != "refused":
            raise StepFailed(f"'failed' without the cold HSM's refusal: {statement}")
        rewrite_send(factory, send.id, status=SendStatus.PENDING, failure_reason="", attempts=0)
    reason = wait_refused(factory, send.id)
    if "code 741" not in reason:
        raise StepFailed(f"the late signing failed for another reason: {reason}")
    node = demo.expect_no_spend(ctx, pool, height, payee)
    return (
        f"withdrawal {vtest_id}: custody's database said 'failed'; the V-device told the site "
        f"only on the cold HSM's signed refusal (code {statement.get('code')}), which closed "
        f"{send.user_tx_no}: custody's later signing was refused (code 741); {node}"
    )
