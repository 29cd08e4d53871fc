"""`python -m examples.merchant_site.cli`: run the merchant site and act on its database.

    serve          run the site on [merchant_site] host:port until SIGTERM
    set-tokens     store the custody cold/hot tokens (after the account was created)
    fetch-batch    fetch an address batch from custody for the V-device to verify
    enqueue        queue a withdrawal for the V-device (encrypted with vtest_password)
    status         batches and withdrawals, as tables
    set-webhook-secret  store the secret `custody webhook add` printed (verifies webhooks)
    catch-up       fetch custody's events missed by the webhook (GET /events), per side
    deposits       the deposit ledger custody's events built, and what may be credited
    tamper-batch   DEMO/ATTACK TOOL: substitute one address of a stored batch

The commands other than `serve` work on the database directly, with or without the site
running. Tokens are read from stdin when given as `-`, so they stay out of `ps`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from cc_common.cli import (
    Table,
    add_dir_argument,
    add_json_argument,
    config_from_args,
    render_table,
    run,
    set_role,
)
from cc_common.config import Config
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from examples.merchant_site import events, store
from examples.merchant_site.app import create_app
from examples.merchant_site.custody_client import CustodyClient
from examples.merchant_site.errors import BadRequest, Forbidden, SiteError
from examples.merchant_site.extensions import TOKEN_KEYS, SiteSettings
from examples.merchant_site.models import AddressType, Deposit, make_session_factory

log = logging.getLogger("merchant_site")

READY_NAME = "merchant-site"


def _open(args: argparse.Namespace) -> tuple[Config, SiteSettings, Session]:
    config = config_from_args(args)
    settings = SiteSettings.from_config(config)
    return config, settings, make_session_factory(settings.database_url)()


def _address_type(text: str) -> AddressType:
    try:
        return AddressType[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError("must be hot or cold") from None


def _listen(host: str, port: int) -> socket.socket:
    """Bind the port ourselves: werkzeug would print and exit 1 when it is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SiteError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(READY_NAME, config.log_dir, fmt=config.log_format)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per V-device poll
    settings = SiteSettings.from_config(config)
    app = create_app(config, settings=settings)
    section = config.section("merchant_site")
    host, port = section.str("host"), section.int("port")
    with _listen(host, port) as sock:  # werkzeug uses a duplicate of this descriptor
        server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    stop = install_stop_handlers()
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    mark_ready(config.run_dir, READY_NAME, url=f"http://{host}:{port}")
    log.info("listening on http://%s:%d (custody at %s)", host, port, settings.custody_url)
    try:
        while not stop.wait(1.0):
            if not thread.is_alive():
                log.error("the HTTP server stopped unexpectedly")
                return 1
    finally:
        server.shutdown()
        clear_ready(config.run_dir, READY_NAME)
    log.info("merchant site stopped")
    return 0


def cmd_set_tokens(args: argparse.Namespace) -> str:
    given = {"cold_token": args.cold, "hot_token": args.hot}
    if not any(given.values()):
        raise BadRequest("give --cold and/or --hot")
    _, _, s = _open(args)
    with s:
        for key in TOKEN_KEYS:
            value = given[key]
            if value == "-":
                value = sys.stdin.readline().strip()
            if value:
                store.set_setting(s, key, value)
        s.commit()
    return "tokens saved: " + ", ".join(k for k in TOKEN_KEYS if given[k])


def cmd_fetch_batch(args: argparse.Namespace) -> dict[str, Any]:
    config, settings, s = _open(args)
    key = f"{args.type.name.lower()}_token"
    with s:
        token = store.get_setting(s, key) or config.section("merchant_site").str(key, "")
        batch = store.fetch_batch(
            s, CustodyClient(settings.custody_url), token, args.type, args.batch
        )
        s.commit()
        return batch.summary()


def cmd_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    _, settings, s = _open(args)
    with s:
        if args.raw_vtest_info:
            if not settings.allow_raw_vtest:
                raise Forbidden("--raw-vtest-info needs the demo switch allow_raw_vtest = true")
            w = store.add_withdrawal(s, args.raw_vtest_info, None, None)
        else:
            if not args.outs:
                raise BadRequest("give OUTS (addr,value;addr,value)")
            w = store.enqueue_withdrawal(
                s, args.outs, args.dynamic, settings.vtest_password, settings.network
            )
        s.commit()
        return w.summary()


def cmd_tamper_batch(args: argparse.Namespace) -> str:
    _, _, s = _open(args)
    with s:
        store.tamper_batch(s, args.type, args.batch, args.index, args.address)
        s.commit()
    name = args.type.name.lower()
    return (
        f"TAMPERED: {name} batch {args.batch} position {args.index} is now {args.address}; "
        "the batch waits for the V-device again"
    )


def cmd_status(args: argparse.Namespace) -> str | dict[str, Any]:
    _, _, s = _open(args)
    with s:
        batches = [
            (b.address_type.name.lower(), b.batch_no, b.status.name.lower(), b.fetched_at)
            for b in store.list_batches(s)
        ]
        withdrawals = [
            (w.vtest_id, w.created_at, w.status.value, w.tx_hash or "-", w.outs or "(raw)")
            for w in store.list_withdrawals(s)
        ]
    if args.json:
        return {
            "batches": Table(("type", "batch", "state", "fetched"), batches).records(),
            "withdrawals": Table(
                ("vtest_id", "requested", "state", "tx_hash", "outs"), withdrawals
            ).records(),
        }
    return (
        "batches\n"
        + render_table(("type", "batch", "state", "fetched"), batches)
        + "\n\nwithdrawals\n"
        + render_table(("vtest_id", "requested", "state", "tx_hash", "outs"), withdrawals)
    )


def cmd_set_webhook_secret(args: argparse.Namespace) -> str:
    given: str = args.secret
    secret = sys.stdin.readline().strip() if given == "-" else given
    if not secret:
        raise BadRequest("give the secret printed by `custody webhook add` ('-' reads stdin)")
    _, _, s = _open(args)
    with s:
        store.set_setting(s, "webhook_secret", secret)
        s.commit()
    return "webhook secret saved"


def cmd_catch_up(args: argparse.Namespace) -> dict[str, Any]:
    config, settings, s = _open(args)
    client = CustodyClient(settings.custody_url)
    added = {}
    with s:
        for side in ("cold", "hot"):
            key = f"{side}_token"
            token = store.get_setting(s, key) or config.section("merchant_site").str(key, "")
            if token:
                added[side] = events.catch_up(s, client, token, side, wait=args.wait)
    return {"added": added}


def cmd_deposits(args: argparse.Namespace) -> dict[str, Any]:
    _, _, s = _open(args)
    with s:
        rows = s.execute(select(Deposit).order_by(Deposit.id)).scalars()
        return {
            "deposits": [d.summary() for d in rows],
            "credited": {side: events.credited_total(s, side) for side in ("cold", "hot")},
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merchant-site", description="The reference merchant website (protocol section 2)."
    )
    set_role(parser, "merchant-site")
    sub = parser.add_subparsers(dest="command")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_dir_argument(p)
        p.set_defaults(handler=handler)
        return p

    command("serve", cmd_serve, "run the site until SIGTERM")

    p = command("set-tokens", cmd_set_tokens, "store the custody tokens ('-' reads stdin)")
    p.add_argument("--cold", help="the cold-receiving token")
    p.add_argument("--hot", help="the hot-sending token")

    p = command("fetch-batch", cmd_fetch_batch, "fetch a batch from custody for verification")
    p.add_argument("--type", type=_address_type, required=True, help="hot or cold")
    p.add_argument("--batch", type=int, required=True, help="batch number")

    p = command("enqueue", cmd_enqueue, "queue a withdrawal for the V-device")
    p.add_argument("outs", nargs="?", help="addr,value;addr,value (satoshi)")
    p.add_argument("--dynamic", type=int, choices=(0, 1), default=1, help="dynamic fee")
    p.add_argument(
        "--raw-vtest-info",
        help="DEMO: store this vtest_info as is, unencrypted (needs allow_raw_vtest = true)",
    )

    p = command("status", cmd_status, "batches and withdrawals")
    add_json_argument(p)

    p = command("set-webhook-secret", cmd_set_webhook_secret, "store custody's webhook secret")
    p.add_argument("secret", help="the secret from `custody webhook add` ('-' reads stdin)")

    p = command("catch-up", cmd_catch_up, "fetch custody's events the webhook missed")
    p.add_argument(
        "--wait", type=float, default=0.0, help="long-poll this many seconds for a first event"
    )
    command("deposits", cmd_deposits, "the deposit ledger from custody's events")

    p = command(
        "tamper-batch",
        cmd_tamper_batch,
        "DEMO/ATTACK TOOL: substitute one address of a stored batch, as a hacked API would",
    )
    p.add_argument("--type", type=_address_type, required=True, help="hot or cold")
    p.add_argument("--batch", type=int, required=True, help="batch number")
    p.add_argument("--index", type=int, required=True, help="position in the batch, 0-999")
    p.add_argument("--address", required=True, help="the substitute address")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
