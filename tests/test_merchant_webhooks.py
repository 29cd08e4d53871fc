"""The reference merchant site takes custody's events by signed webhook, polling as fallback.

Custody's side is real: its API app and database (tests/api_fixtures.py) served over HTTP, and
its webhook `Deliverer`. The site is the real merchant app served over HTTP. While the site is
down, events accumulate; when it is back it receives every one once, in seq order, and its
deposit ledger credits only confirmed deposits (a replaced one never). A forged or stale
signature is refused and changes nothing; `catch-up` fetches what a webhook never brought.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from custody import journal, webhook_signing, webhooks
from custody.journal import JournalKind
from custody.models import EventSide
from custody.webhooks import Deliverer, WebhookSettings
from examples.merchant_site import cli as site_cli
from examples.merchant_site.app import create_app as create_site
from examples.merchant_site.models import CustodyEvent, make_session_factory
from tests.harness import Deployment

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Served:
    """A WSGI app on a free loopback port in a thread, stoppable and restartable."""

    def __init__(self, wsgi: Flask) -> None:
        self.wsgi = wsgi
        self.port = 0
        self.server: Any = None

    def start(self) -> None:
        self.server = make_server("127.0.0.1", self.port, self.wsgi, threaded=True)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def custody_http(app: Flask) -> Iterator[Served]:
    served = Served(app)
    served.start()
    yield served
    served.stop()


@pytest.fixture
def site(
    deployment: Callable[..., Deployment], custody_http: Served, session_factory, account
) -> Iterator[tuple[Served, Deployment, int]]:
    """The merchant site, registered as the account's webhook endpoint (not started yet)."""
    placeholder = Served(Flask("placeholder"))
    placeholder.start()  # reserve a port, then hand it to the site
    port = placeholder.port
    placeholder.stop()
    with session_factory() as s, s.begin():
        endpoint, secret = webhooks.add_endpoint(
            s, account.id, f"http://127.0.0.1:{port}/webhooks/custody", EventSide.BOTH
        )
    d = deployment(
        config={
            "merchant_site": {
                "custody_url": custody_http.url,
                "webhook_secret": secret,
                "cold_token": account.cold_token,
                "hot_token": account.hot_token,
            }
        }
    )
    served = Served(create_site(d.config))
    served.port = port
    yield served, d, endpoint.id
    served.stop()


def event(
    factory: sessionmaker[Session],
    account_id: int,
    kind: str,
    txid: str,
    wallet: str = "hot",
    **kw: Any,
) -> None:
    """What the watcher journals for a deposit transition (the event comes with it)."""
    data = {"txid": txid, "wallet": wallet, "value": 5000, **kw}
    with factory() as s, s.begin():
        journal.append(s, JournalKind(kind), account_id, data)


def site_db(d: Deployment) -> sessionmaker[Session]:
    return make_session_factory(d.config.section("merchant_site").str("database_url"))


def test_site_down_then_back_gets_every_event_once_in_order(
    site, session_factory, account, capsys: pytest.CaptureFixture[str]
) -> None:
    served, d, _ = site
    a, b = "aa" * 32, "bb" * 32
    event(session_factory, account.id, "deposit_seen", a)
    event(session_factory, account.id, "deposit_seen", b)
    event(session_factory, account.id, "deposit_replaced", a)
    event(session_factory, account.id, "deposit_confirmed", b, height=7)
    deliverer = Deliverer(session_factory, WebhookSettings(backoff_initial=0.0, backoff_max=0.0))
    assert deliverer.step() == 0  # the site is down
    served.start()
    assert deliverer.step() == 4
    assert deliverer.step() == 0
    with site_db(d)() as s:
        got = s.execute(select(CustodyEvent.seq, CustodyEvent.via).order_by(CustodyEvent.id))
        assert got.all() == [(1, "webhook"), (2, "webhook"), (3, "webhook"), (4, "webhook")]
    assert site_cli.main(["deposits", "--dir", str(d.data_dir)]) == 0
    out = capsys.readouterr().out
    assert '"credited": {\n    "cold": 0,\n    "hot": 5000\n  }' in out  # b only
    assert '"state": "replaced"' in out


def test_forged_and_stale_signatures_are_refused(site, account) -> None:
    served, d, _ = site
    served.start()
    client = served.wsgi.test_client()
    body = (
        f'{{"account_id":{account.id},"seq":1,"kind":"deposit.confirmed","side":"hot",'
        f'"at":"2026-01-01T00:00:00","data":{{"txid":"{"cc" * 32}","value":99}}}}'
    ).encode()
    forged = webhook_signing.signature_header("whsec_not_the_secret", body)
    secret = d.config.section("merchant_site").str("webhook_secret")
    stale = webhook_signing.signature_header(secret, body, now=1_000_000)
    cases = [
        (forged, "webhook signature does not match"),
        (stale, "outside the 300 s window"),
        ("", "missing CC-Signature header"),
    ]
    for header, words in cases:
        r = client.post(
            "/webhooks/custody", data=body, headers={"CC-Signature": header} if header else {}
        )
        assert r.status_code == 401 and words in r.json["message"], r.json
    with site_db(d)() as s:
        assert s.execute(select(CustodyEvent)).first() is None
    good = webhook_signing.signature_header(secret, body)
    r = client.post("/webhooks/custody", data=body, headers={"CC-Signature": good})
    assert r.status_code == 204
    r = client.post("/webhooks/custody", data=body, headers={"CC-Signature": good})
    assert r.status_code == 204  # the same event again: stored once
    with site_db(d)() as s:
        assert len(s.execute(select(CustodyEvent)).all()) == 1


def test_catch_up_polls_what_no_webhook_brought(site, session_factory, account) -> None:
    served, d, endpoint_id = site
    with session_factory() as s, s.begin():
        webhooks.remove_endpoint(s, endpoint_id)  # no webhook at all: polling only
    # the two tokens see interleaved numbers: hot 1, both 2, cold 3, hot 4
    event(session_factory, account.id, "deposit_seen", "dd" * 32)
    with session_factory() as s, s.begin():
        journal.append(s, JournalKind.ACCOUNT_FROZEN, account.id, {"reason": "test"})
    event(session_factory, account.id, "deposit_seen", "ee" * 32, wallet="cold")
    event(session_factory, account.id, "deposit_final", "dd" * 32, confirmations=6)
    assert site_cli.main(["catch-up", "--dir", str(d.data_dir)]) == 0
    assert site_cli.main(["catch-up", "--dir", str(d.data_dir)]) == 0  # nothing new
    with site_db(d)() as s:
        got = s.execute(select(CustodyEvent.seq, CustodyEvent.via).order_by(CustodyEvent.seq))
        assert got.all() == [(1, "poll"), (2, "poll"), (3, "poll"), (4, "poll")]
