"""`POST /tx/request` through the group committer (custody/group_commit.py,
custody/send_intake.py), on SQLite and PostgreSQL: requests written together in one
transaction each get their own answer (accepted, duplicate, frozen), a write that fails does
not fail its group's others, and the journal's chain and the events' numbering come out as if
every request had been written alone.

A group is made for sure by holding the committer's commit lock while the requests queue:
the first request to get it then leads and writes every one of them in one transaction."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import jsonify
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from custody import journal, webhooks
from custody.db import is_busy
from custody.extensions import send_intake_committer
from custody.group_commit import GroupCommitter
from custody.models import (
    Account,
    AccountStatus,
    DeliveryStatus,
    Event,
    EventSide,
    JournalEntry,
    KeyValue,
    Send,
    WebhookDelivery,
    utcnow,
)
from custody.send_intake import Intake, NewSend, committer
from tests.api_fixtures import new_account, sign_vc_code

API = "/api/v1/open"
PAYEE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def form(user_tx_no: str, value: int = 10_000) -> dict[str, str]:
    f = {
        "coin_code": "BTC",
        "user_tx_no": user_tx_no,
        "outs": f"{PAYEE},{value}",
        "is_dynamic_fee": "1",
        "c_id": "7",
    }
    f["vc_code"] = sign_vc_code(f)
    return f


@contextmanager
def one_group(c: GroupCommitter[Any, Any], expected: int) -> Iterator[None]:
    """Take `c`'s leadership until `expected` writes wait, so they go as one group."""
    with c._changed:
        while c._leading:
            c._changed.wait()
        c._leading = True
    try:
        yield
        deadline = time.monotonic() + 30
        while len(c._queue) < expected:
            assert time.monotonic() < deadline, f"only {len(c._queue)} writes queued"
            time.sleep(0.01)
    finally:
        with c._changed:
            c._leading = False
            c._changed.notify_all()


def start(work: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=w) for w in work]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def post_all(app, headers, forms) -> list[Any]:
    """Post `forms` from one thread each, written as one group; their responses in order."""
    c = app.extensions[send_intake_committer.key]
    answers: list[Any] = [None] * len(forms)

    def post(i: int) -> None:
        r = app.test_client().post(f"{API}/tx/request", headers=headers, data=forms[i])
        answers[i] = (r.status_code, r.json)

    groups = c.groups
    with one_group(c, len(forms)):
        threads = start([lambda i=i: post(i) for i in range(len(forms))])
    join(threads)
    assert c.groups == groups + 1  # one transaction wrote them all
    return answers


def chain_ok(session_factory) -> journal.VerifyResult:
    with session_factory() as s:
        result = journal.verify(s)
    assert result.ok, result.describe()
    return result


def test_a_group_of_concurrent_requests_each_get_their_own_answer(app, account, session_factory):
    forms = [form(f"burst-{i}", 10_000 + i) for i in range(12)]
    answers = post_all(app, account.hot, forms)
    assert answers == [(200, {"result": True})] * 12
    with session_factory() as s:
        sends = s.execute(select(Send.user_tx_no, Send.outs, Send.id)).all()
        entries = s.execute(
            select(JournalEntry.data).where(JournalEntry.kind == "send_requested")
        ).scalars()
        journalled = {(e["user_tx_no"], e["send_id"]) for e in map(json.loads, entries)}
        seqs = s.execute(
            select(Event.seq).where(Event.account_id == account.id).order_by(Event.seq)
        ).scalars()
        seqs = list(seqs)
    assert sorted(u for u, _, _ in sends) == sorted(f["user_tx_no"] for f in forms)
    assert {u: o for u, o, _ in sends} == {f["user_tx_no"]: f["outs"] for f in forms}
    assert journalled == {(u, i) for u, _, i in sends}
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gapless, one per request
    chain_ok(session_factory)


def test_a_group_queues_its_events_for_the_endpoints_that_see_them(
    app, account, session_factory, hsm
):
    """The group's journal entries, head, events and their webhook deliveries (one statement
    on PostgreSQL): each accepted send's event once per endpoint of a side that sees it,
    in event order, none for another account's endpoint or a removed one."""
    other = new_account(session_factory, hsm, "erin")
    with session_factory() as s, s.begin():
        hot, _ = webhooks.add_endpoint(s, account.id, "http://127.0.0.1:9/hot", EventSide.HOT)
        both, _ = webhooks.add_endpoint(s, account.id, "http://127.0.0.1:9/b", EventSide.BOTH)
        cold, _ = webhooks.add_endpoint(s, account.id, "http://127.0.0.1:9/c", EventSide.COLD)
        gone, _ = webhooks.add_endpoint(s, account.id, "http://127.0.0.1:9/g", EventSide.HOT)
        gone.removed_at = utcnow()
        webhooks.add_endpoint(s, other.id, "http://127.0.0.1:9/other")
        endpoints = (hot.id, both.id)
    forms = [form(f"hook-{i}") for i in range(3)]
    assert post_all(app, account.hot, forms) == [(200, {"result": True})] * 3
    with session_factory() as s:
        events = s.execute(
            select(Event.id, Event.kind, Event.data).where(Event.account_id == account.id)
        ).all()
        deliveries = s.execute(
            select(
                WebhookDelivery.event_id, WebhookDelivery.endpoint_id, WebhookDelivery.status
            ).order_by(WebhookDelivery.id)
        ).all()
        head = json.loads(s.get(KeyValue, journal.HEAD_KEY).value)
        newest = s.execute(select(func.max(JournalEntry.id))).scalar()
    accepted = [e for e in events if e.kind == "send.accepted"]
    assert sorted(json.loads(e.data)["user_tx_no"] for e in accepted) == [
        f["user_tx_no"] for f in forms
    ]
    assert deliveries == [
        (e.id, endpoint, DeliveryStatus.PENDING)
        for e in sorted(accepted, key=lambda e: e.id)
        for endpoint in endpoints
    ]
    assert head["id"] == newest and chain_ok(session_factory).ok


def test_an_accepted_request_answers_what_jsonify_would(app, account):
    """The accepted answer is a constant, exactly the bytes `jsonify` gave for it."""
    r = app.test_client().post(f"{API}/tx/request", headers=account.hot, data=form("bytes"))
    with app.app_context():
        expected = jsonify({"result": True})
    assert r.status_code == 200
    assert (r.get_data(), r.mimetype) == (expected.get_data(), expected.mimetype)


def test_a_duplicate_inside_one_group_and_one_of_before(app, account, session_factory):
    assert app.test_client().post(f"{API}/tx/request", headers=account.hot, data=form("old"))
    forms = [form("twice"), form("fresh"), form("twice", 20_000), form("old")]
    answers = post_all(app, account.hot, forms)
    accepted = (200, {"result": True})
    assert answers[1] == accepted
    # the two "twice": whichever the group holds first is accepted, the other is a duplicate
    assert sorted([answers[0][0], answers[2][0]]) == [200, 400]
    kept = forms[0] if answers[0] == accepted else forms[2]
    for status, body in [a for a in (answers[0], answers[2]) if a != accepted] + [answers[3]]:
        assert status == 400 and body["code"] == 3 and "already accepted" in body["message"]
    with session_factory() as s:
        rows = dict(s.execute(select(Send.user_tx_no, Send.outs)).all())
    assert rows == {"old": form("old")["outs"], "twice": kept["outs"], "fresh": forms[1]["outs"]}
    assert chain_ok(session_factory).count > 0


def test_a_frozen_account_in_a_group_refuses_only_its_own(app, account, session_factory, hsm):
    other = new_account(session_factory, hsm, "carol")
    with session_factory() as s, s.begin():
        s.execute(update(Account).where(Account.id == other.id).values(status=AccountStatus.FROZEN))
    c = app.extensions[send_intake_committer.key]
    answers: dict[str, Any] = {}

    def post(name: str, headers: dict[str, str], f: dict[str, str]) -> None:
        r = app.test_client().post(f"{API}/tx/request", headers=headers, data=f)
        answers[name] = (r.status_code, r.json["code"] if r.status_code != 200 else 0)

    with one_group(c, 2):
        threads = start(
            [
                lambda: post("alice", account.hot, form("a-1")),
                lambda: post("carol", other.hot, form("c-1")),
            ]
        )
    join(threads)
    assert answers == {"alice": (200, 0), "carol": (409, 9)}
    with session_factory() as s:
        assert s.execute(select(Send.account_id)).scalars().all() == [account.id]


def test_a_failing_write_does_not_fail_its_group(account, session_factory):
    """A send of an account that does not exist breaks its group's transaction (foreign
    key): the group is written again one by one, and only that one fails."""
    c = committer(session_factory)
    sends = [
        NewSend(account.id, "good-1", "BTC", f"{PAYEE},10000", 1, "vc", "7"),
        NewSend(account.id + 1000, "bad", "BTC", f"{PAYEE},10000", 1, "vc", "7"),
        NewSend(account.id, "good-2", "BTC", f"{PAYEE},10000", 1, "vc", "7"),
    ]
    outcomes: dict[str, Any] = {}

    def submit(send: NewSend) -> None:
        try:
            outcomes[send.user_tx_no] = c.submit(send)
        except IntegrityError as exc:
            outcomes[send.user_tx_no] = exc

    with one_group(c, 3):
        threads = start([lambda s=s: submit(s) for s in sends])
    join(threads)
    assert outcomes["good-1"] is Intake.ACCEPTED and outcomes["good-2"] is Intake.ACCEPTED
    assert isinstance(outcomes["bad"], IntegrityError)
    assert c.groups == 3  # the failed group, then each alone
    with session_factory() as s:
        assert sorted(s.execute(select(Send.user_tx_no)).scalars()) == ["good-1", "good-2"]
    chain_ok(session_factory)


def test_the_journals_first_entry_is_written_by_a_group(account, session_factory):
    """With no journal yet (no head row), a group still journals its sends: on PostgreSQL
    the group's plain-connection write gives way to the session's, which creates the head."""
    with session_factory() as s, s.begin():
        s.execute(delete(JournalEntry))
        s.execute(delete(KeyValue).where(KeyValue.key == journal.HEAD_KEY))
    c = committer(session_factory)
    assert c.submit(NewSend(account.id, "first", "BTC", f"{PAYEE},10000", 1, "vc", "7")) is (
        Intake.ACCEPTED
    )
    assert c.submit(NewSend(account.id, "second", "BTC", f"{PAYEE},10000", 1, "vc", "7")) is (
        Intake.ACCEPTED
    )
    with session_factory() as s:
        kinds = s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars().all()
    assert kinds == [journal.JournalKind.SEND_REQUESTED] * 2
    assert chain_ok(session_factory).count == 2


def test_chain_verifies_after_a_concurrent_burst(app, account, session_factory, hsm):
    """Many threads, several accounts, no help in grouping: whatever the groups were, every
    request is answered, stored once and journalled once, and the chain verifies."""
    other = new_account(session_factory, hsm, "dave")
    n = 40
    answers: list[Any] = [None] * n

    def post(i: int) -> None:
        who = account if i % 2 else other
        f = form(f"b-{i // 4}", 10_000 + i)  # each number posted twice per account
        r = app.test_client().post(f"{API}/tx/request", headers=who.hot, data=f)
        answers[i] = (who.id, f["user_tx_no"], r.status_code)

    join(start([lambda i=i: post(i) for i in range(n)]))
    accepted = {(a, u) for a, u, status in answers if status == 200}
    assert len(accepted) == n // 2 == len([a for a in answers if a[2] == 200])
    assert all(status in (200, 400) for _, _, status in answers)
    with session_factory() as s:
        stored = set(s.execute(select(Send.account_id, Send.user_tx_no)).all())
        journalled = s.execute(
            select(func.count()).where(JournalEntry.kind == "send_requested")
        ).scalar()
    assert stored == accepted and journalled == len(accepted)
    before = chain_ok(session_factory).count
    assert before >= len(accepted)


def test_a_busy_database_fails_the_whole_group_at_once():
    """Waiting for a lock that stayed taken is everyone's answer (503, nothing written): a
    retry one by one would only wait again, each in turn."""
    calls: list[int] = []

    def write(items):
        calls.append(len(items))
        raise PoolTimeout("no connection")

    c: GroupCommitter[int, int] = GroupCommitter(write, shared_error=is_busy)
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            c.submit(i)
        except PoolTimeout as exc:
            errors.append(exc)

    with one_group(c, 4):
        threads = start([lambda i=i: submit(i) for i in range(4)])
    join(threads)
    assert calls == [4] and len(errors) == 4


def test_group_results_reach_their_own_writers():
    c: GroupCommitter[int, int] = GroupCommitter(lambda items: [i * 10 for i in items], max_group=3)
    got: dict[int, int] = {}
    with one_group(c, 8):
        threads = start([lambda i=i: got.__setitem__(i, c.submit(i)) for i in range(8)])
    join(threads)
    assert got == {i: i * 10 for i in range(8)}
    assert c.groups == 3  # 8 waiting writes, at most 3 a group


def test_a_written_write_is_answered_while_the_next_group_is_written():
    """A writer whose write a group took is answered when that group is written, not after
    the next group, which a writer that came meanwhile leads (it used to wait for the commit
    lock, which that next leader may hold first). Repeated: which waiter took the lock first
    was a race."""
    for _ in range(20):
        release = threading.Event()
        late: list[threading.Thread] = []
        got: dict[str, str] = {}

        def write(items: list[str], late=late, release=release, got=got) -> list[str]:
            if "late" in items:
                assert release.wait(30)
            elif not late:  # the first group: a writer comes and waits while it is written
                late.extend(start([lambda: got.__setitem__("late", c.submit("late"))]))
                deadline = time.monotonic() + 30
                while "late" not in [t.item for t in c._queue]:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            return items

        c: GroupCommitter[str, str] = GroupCommitter(write)
        with one_group(c, 2):
            first = start([lambda n=n: got.__setitem__(n, c.submit(n)) for n in ("a", "b")])
        join(first)  # while the late writer's group is still being written
        assert got == {"a": "a", "b": "b"} and not release.is_set()
        release.set()
        join(late)
        assert got["late"] == "late" and c.groups == 2


def test_refusals_keep_their_order(app, account, session_factory):
    """A duplicate is answered as one (code 3) before its vc_code is judged, and a frozen
    account (code 9) before it too: the order of the checks when each request was written
    alone, though the write now comes after the signature check."""
    client = app.test_client()
    assert (
        client.post(f"{API}/tx/request", headers=account.hot, data=form("seen")).status_code == 200
    )
    forged = {**form("seen"), "vc_code": form("other")["vc_code"]}
    r = client.post(f"{API}/tx/request", headers=account.hot, data=forged)
    assert r.status_code == 400 and r.json["code"] == 3, r.json
    r = client.post(f"{API}/tx/request", headers=account.hot, data={**forged, "user_tx_no": "new"})
    assert r.status_code == 400 and r.json["code"] == 40, r.json  # not a duplicate: forged
    with session_factory() as s, s.begin():
        s.execute(
            update(Account).where(Account.id == account.id).values(status=AccountStatus.FROZEN)
        )
    r = client.post(f"{API}/tx/request", headers=account.hot, data={**forged, "user_tx_no": "new"})
    assert r.status_code == 409 and r.json["code"] == 9, r.json
    r = client.post(f"{API}/tx/request", headers=account.hot, data=forged)
    assert r.status_code == 400 and r.json["code"] == 3, r.json
    r = client.post(f"{API}/tx/request", headers=account.hot, data=form("fresh"))
    assert r.status_code == 409 and r.json["code"] == 9, r.json
    with session_factory() as s:
        assert s.execute(select(Send.user_tx_no)).scalars().all() == ["seen"]
