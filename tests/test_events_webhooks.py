"""Events and webhooks on SQLite and PostgreSQL: numbers without gaps per account (also under
concurrent writers and rollbacks), `GET /events` scoped to the token's side with long polling,
signed webhook deliveries in seq order to a real HTTP receiver that is down for a while, two
deliverers never delivering one event twice, parking after the retry window and redelivery,
and the signature check refusing forged and stale requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import events, journal, webhook_signing, webhooks
from custody.models import DeliveryStatus, Event, EventSide, WebhookDelivery
from custody.webhooks import Deliverer, WebhookSettings
from tests.harness import in_threads

API = "/api/v1/open"


def deposit(factory: sessionmaker[Session], account_id: int, wallet: str, n: int) -> None:
    """What the watcher writes for a deposit it sees (journal entry -> event)."""
    with factory() as s, s.begin():
        data = {"txid": f"{n:064x}", "wallet": wallet, "value": 1000 + n}
        journal.append(s, "deposit_seen", account_id, data)


def seqs(factory: sessionmaker[Session], account_id: int) -> list[int]:
    with factory() as s:
        return list(
            s.execute(
                select(Event.seq).where(Event.account_id == account_id).order_by(Event.seq)
            ).scalars()
        )


# ---------------------------------------------------------------------- numbering


def test_numbers_have_no_gaps_per_account_under_concurrency_and_rollback(
    session_factory, account, other_account
) -> None:
    deposit(session_factory, account.id, "hot", 1)
    with pytest.raises(RuntimeError), session_factory() as s, s.begin():
        journal.append(s, "deposit_seen", account.id, {"txid": "ab" * 32, "wallet": "hot"})
        raise RuntimeError("the change is rolled back, and its number with it")

    def writer(k: int) -> None:
        for n in range(5):
            deposit(session_factory, account.id, "cold", 100 * k + n)

    in_threads(writer, 3)
    deposit(session_factory, other_account.id, "hot", 7)
    assert seqs(session_factory, account.id) == list(range(1, 17))
    assert seqs(session_factory, other_account.id) == [1]
    with session_factory() as s:
        assert journal.verify(s).ok


# ---------------------------------------------------------------------- the API


def test_events_are_scoped_to_the_token_side_and_paged(
    client, session_factory, account, other_account
) -> None:
    deposit(session_factory, account.id, "hot", 1)
    deposit(session_factory, account.id, "cold", 2)
    with session_factory() as s, s.begin():
        journal.append(s, "account_frozen", account.id, {"reason": "test"})
        journal.append(s, "send_failed", account.id, {"user_tx_no": "o-1", "reason": "x"})
    hot = client.get(f"{API}/events", headers=account.hot).json
    assert [(e["seq"], e["kind"]) for e in hot["events"]] == [
        (1, "deposit.seen"),
        (3, "account.frozen"),
        (4, "send.failed"),
    ]
    assert hot["last_seq"] == 4 and hot["events"][0]["data"]["value"] == 1001
    cold = client.get(f"{API}/events?after=1", headers=account.cold).json
    assert [(e["seq"], e["kind"], e["side"]) for e in cold["events"]] == [
        (2, "deposit.seen", "cold"),
        (3, "account.frozen", "both"),
    ]
    page = client.get(f"{API}/events?after=1&limit=1", headers=account.hot).json
    assert [e["seq"] for e in page["events"]] == [3] and page["last_seq"] == 3
    empty = client.get(f"{API}/events?after=4", headers=account.hot).json
    assert empty == {"events": [], "last_seq": 4}
    for headers in (other_account.hot, other_account.cold):  # another account sees nothing
        assert client.get(f"{API}/events", headers=headers).json == {"events": [], "last_seq": 0}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("after=x", "after must be an integer, got 'x'"),
        ("after=-1", "after must be between 0 and 2147483647, got -1"),
        ("limit=0", "limit must be between 1 and 500, got 0"),
        ("wait=31", "wait must be between 0 and 30 seconds, got 31"),
        ("wait=soon", "wait must be a number of seconds, got 'soon'"),
    ],
)
def test_bad_event_queries_are_refused_clearly(client, account, query: str, message: str) -> None:
    r = client.get(f"{API}/events?{query}", headers=account.hot)
    assert r.status_code == 400 and r.json["message"] == message


def test_long_poll_returns_when_an_event_arrives(client, session_factory, account) -> None:
    timer = threading.Timer(0.4, deposit, args=(session_factory, account.id, "hot", 9))
    start = time.monotonic()
    timer.start()
    r = client.get(f"{API}/events?after=0&wait=10", headers=account.hot).json
    elapsed = time.monotonic() - start
    timer.join()
    assert [e["kind"] for e in r["events"]] == ["deposit.seen"]
    assert 0.3 < elapsed < 8
    r = client.get(f"{API}/events?after=1&wait=0.3", headers=account.hot).json
    assert r == {"events": [], "last_seq": 1}


# ---------------------------------------------------------------------- webhooks


class Receiver:
    """A merchant's webhook endpoint: verifies each POST's signature, records the events."""

    def __init__(self, secret: str = "") -> None:
        self.secret = secret
        self.up = True
        self.received: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not receiver.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    webhook_signing.verify(
                        receiver.secret, self.headers.get(webhook_signing.SIGNATURE_HEADER), body
                    )
                except webhook_signing.WebhookSignatureInvalid as exc:
                    with receiver.lock:
                        receiver.refused.append(exc.message)
                    self.send_response(401)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def register(factory: sessionmaker[Session], account_id: int, receiver: Receiver) -> int:
    with factory() as s, s.begin():
        endpoint, secret = webhooks.add_endpoint(s, account_id, receiver.url, EventSide.BOTH)
        receiver.secret = secret
        return endpoint.id


def statuses(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as s:
        rows = s.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
        ).all()
    return {st.value: n for st, n in rows}


def fast(**kw: Any) -> WebhookSettings:
    return WebhookSettings(backoff_initial=0.0, backoff_max=0.0, **kw)


def test_endpoint_down_for_a_while_gets_every_event_once_in_order(
    session_factory, account, receiver
) -> None:
    register(session_factory, account.id, receiver)
    receiver.up = False
    for n in range(6):
        deposit(session_factory, account.id, "hot" if n % 2 else "cold", n)
    d = Deliverer(session_factory, fast(), owner="d1")
    assert d.step() == 0  # down: the first event failed, the queue waits behind it
    assert d.step() == 0
    assert statuses(session_factory) == {"pending": 6}
    receiver.up = True
    assert d.step() == 6
    assert [e["seq"] for e in receiver.received] == [1, 2, 3, 4, 5, 6]
    assert d.step() == 0
    assert statuses(session_factory) == {"delivered": 6}
    assert receiver.refused == []


def test_backoff_waits_between_attempts(session_factory, account, receiver) -> None:
    register(session_factory, account.id, receiver)
    receiver.up = False
    deposit(session_factory, account.id, "hot", 1)
    d = Deliverer(session_factory, WebhookSettings(backoff_initial=3600.0), owner="d1")
    assert d.step() == 0
    receiver.up = True
    assert d.step() == 0  # not due for an hour: nothing is posted
    assert receiver.received == []


def test_two_deliverers_never_deliver_one_event_twice(session_factory, account, receiver) -> None:
    register(session_factory, account.id, receiver)
    for n in range(20):
        deposit(session_factory, account.id, "hot", n)
    delivered: list[int] = []
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        d = Deliverer(session_factory, fast(), owner=name)
        barrier.wait()
        for _ in range(10):
            delivered.append(d.step())

    threads = [threading.Thread(target=run, args=(f"d{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(delivered) == 20
    assert [e["seq"] for e in receiver.received] == list(range(1, 21))


def test_parked_after_the_retry_window_then_redelivered(session_factory, account, receiver) -> None:
    endpoint_id = register(session_factory, account.id, receiver)
    receiver.up = False
    deposit(session_factory, account.id, "hot", 1)
    deposit(session_factory, account.id, "hot", 2)
    d = Deliverer(session_factory, fast(retry_hours=0.0), owner="d1")
    d.step()
    assert statuses(session_factory) == {"parked": 2}
    receiver.up = True
    assert d.step() == 0
    with session_factory() as s, s.begin():
        assert webhooks.redeliver(s, endpoint_id=endpoint_id) == 2
    assert d.step() == 2
    assert [e["seq"] for e in receiver.received] == [1, 2]


def test_removed_endpoint_receives_nothing_more(session_factory, account, receiver) -> None:
    endpoint_id = register(session_factory, account.id, receiver)
    with session_factory() as s, s.begin():
        webhooks.remove_endpoint(s, endpoint_id)
    deposit(session_factory, account.id, "hot", 1)
    assert Deliverer(session_factory, fast()).step() == 0
    with pytest.raises(webhooks.WebhookNotFound), session_factory() as s, s.begin():
        webhooks.remove_endpoint(s, endpoint_id)
    with pytest.raises(webhooks.WebhookUrlInvalid), session_factory() as s, s.begin():
        webhooks.add_endpoint(s, account.id, "ftp://example.org/x")


# ---------------------------------------------------------------------- signatures


def test_signature_refuses_forged_stale_and_malformed() -> None:
    body = b'{"seq":1}'
    header = webhook_signing.signature_header("whsec_k", body, now=1_000_000)
    assert webhook_signing.verify("whsec_k", header, body, now=1_000_100) == 1_000_000
    with pytest.raises(webhook_signing.WebhookSignatureInvalid, match="does not match"):
        webhook_signing.verify("whsec_other", header, body, now=1_000_000)
    with pytest.raises(webhook_signing.WebhookSignatureInvalid, match="does not match"):
        webhook_signing.verify("whsec_k", header, b'{"seq":2}', now=1_000_000)
    with pytest.raises(webhook_signing.WebhookSignatureStale, match="replay window"):
        webhook_signing.verify("whsec_k", header, body, now=1_000_301)
    with pytest.raises(webhook_signing.WebhookSignatureInvalid, match="missing"):
        webhook_signing.verify("whsec_k", None, body)
    with pytest.raises(webhook_signing.WebhookSignatureInvalid, match="malformed"):
        webhook_signing.verify("whsec_k", "t=soon,v1=00", body)
    assert events.sees(EventSide.HOT, EventSide.BOTH) and not events.sees(
        EventSide.HOT, EventSide.COLD
    )
    assert DeliveryStatus.PARKED.value == "parked"
