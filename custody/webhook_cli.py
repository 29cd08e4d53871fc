"""`custody webhook add/list/remove/deliveries/redeliver`: the operator's webhook commands.

The endpoint's signing secret is printed once, by `add`, for the receiver's configuration; it
is never logged.
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select

from cc_common.cli import add_dir_argument, config_from_args, render_table
from custody import webhooks
from custody.db import database_url, make_engine, make_session_factory, transaction
from custody.models import DeliveryStatus, Event, EventSide, WebhookDelivery, WebhookEndpoint


def _factory(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(database_url(config_from_args(args))))


def cmd_add(args: argparse.Namespace) -> dict[str, Any]:
    with transaction(_factory(args)) as s:
        endpoint, secret = webhooks.add_endpoint(s, args.account, args.url, EventSide(args.side))
        return {
            "id": endpoint.id,
            "account_id": endpoint.account_id,
            "url": endpoint.url,
            "side": endpoint.side.value,
            "secret": secret,
            "notice": "the secret is shown once: configure it at the receiver",
        }


def cmd_list(args: argparse.Namespace) -> str:
    with _factory(args)() as s:
        q = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
        if args.account is not None:
            q = q.where(WebhookEndpoint.account_id == args.account)
        rows = [
            (
                e.id,
                e.account_id,
                e.side.value,
                "removed" if e.removed_at else "active",
                e.next_at.replace(microsecond=0).isoformat() if e.next_at else "-",
                e.url,
            )
            for e in s.execute(q).scalars()
        ]
    return render_table(("id", "account", "side", "state", "retry_at", "url"), rows)


def cmd_remove(args: argparse.Namespace) -> str:
    with transaction(_factory(args)) as s:
        webhooks.remove_endpoint(s, args.id)
    return f"webhook endpoint {args.id} removed (its pending deliveries stop)"


def cmd_deliveries(args: argparse.Namespace) -> str:
    with _factory(args)() as s:
        q = (
            select(WebhookDelivery, Event)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(args.limit)
        )
        if args.endpoint is not None:
            q = q.where(WebhookDelivery.endpoint_id == args.endpoint)
        if args.status is not None:
            q = q.where(WebhookDelivery.status == DeliveryStatus(args.status))
        rows = [
            (
                d.id,
                d.endpoint_id,
                e.seq,
                e.kind,
                d.status.value,
                d.attempts,
                d.last_result or "-",
                d.last_attempt_at.replace(microsecond=0).isoformat() if d.last_attempt_at else "-",
            )
            for d, e in s.execute(q).all()
        ]
    headers = ("id", "endpoint", "seq", "kind", "status", "attempts", "last_result", "last_at")
    return render_table(headers, rows)


def cmd_redeliver(args: argparse.Namespace) -> str:
    with transaction(_factory(args)) as s:
        n = webhooks.redeliver(s, delivery_id=args.delivery, endpoint_id=args.endpoint)
    return f"{n} delivery(ies) queued again"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `custody webhook ...` to the `custody` parser."""
    p = sub.add_parser("webhook", help="webhook endpoints receiving an account's events")
    wsub = p.add_subparsers(dest="webhook_command", required=True)

    q = wsub.add_parser("add", help="register an endpoint URL (prints its signing secret once)")
    add_dir_argument(q)
    q.add_argument("--account", type=int, required=True, help="account id")
    q.add_argument("--url", required=True, help="absolute http(s) URL receiving the POSTs")
    q.add_argument(
        "--side",
        choices=[s.value for s in EventSide],
        default=EventSide.BOTH.value,
        help="which events: hot, cold or both sides (default both)",
    )
    q.set_defaults(handler=cmd_add)

    q = wsub.add_parser("list", help="list endpoints")
    add_dir_argument(q)
    q.add_argument("--account", type=int, help="only this account's endpoints")
    q.set_defaults(handler=cmd_list)

    q = wsub.add_parser("remove", help="stop delivering to an endpoint")
    add_dir_argument(q)
    q.add_argument("id", type=int, help="endpoint id (see `custody webhook list`)")
    q.set_defaults(handler=cmd_remove)

    q = wsub.add_parser("deliveries", help="the delivery log, newest first")
    add_dir_argument(q)
    q.add_argument("--endpoint", type=int, help="only this endpoint's deliveries")
    q.add_argument(
        "--status", choices=[s.value for s in DeliveryStatus], help="only deliveries in this state"
    )
    q.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    q.set_defaults(handler=cmd_deliveries)

    q = wsub.add_parser("redeliver", help="queue a delivery, or an endpoint's parked ones, again")
    add_dir_argument(q)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--delivery", type=int, help="one delivery id")
    which.add_argument("--endpoint", type=int, help="every parked delivery of this endpoint")
    q.set_defaults(handler=cmd_redeliver)
