"""The request watchdog: a request past its deadline is logged once with the stack of the
thread serving it (where it is stuck, never a value), and a process whose request threads are
all busy says so. The custody API's requests are watched from `timing.start` on."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask

from cc_common.watchdog import Watchdog
from custody.api import timing

log = logging.getLogger("test.watchdog")


def stuck_in_the_database(release: threading.Event, started: threading.Event) -> None:
    """Stands in for a request blocked on a lock; its name must appear in the stack."""
    started.set()
    release.wait(10)


@pytest.fixture
def stuck() -> Iterator[tuple[Watchdog, threading.Event]]:
    dog = Watchdog(log, every=3600)  # checked by hand below
    release, started = threading.Event(), threading.Event()

    def serve() -> None:
        secret = "tprv-not-in-the-log"  # noqa: F841 (a local must never be logged)
        with dog.watch("GET /api/v1/open/address/batch/0", 0.05):
            stuck_in_the_database(release, started)

    t = threading.Thread(target=serve, name="request-1")
    t.start()
    assert started.wait(5)
    yield dog, release
    release.set()
    t.join(5)


def test_an_overdue_request_is_logged_once_with_its_stack(
    stuck: tuple[Watchdog, threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    dog, release = stuck
    caplog.set_level(logging.WARNING, logger=log.name)
    assert dog.check(time.monotonic() + 1.0) == 1
    reports = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert len(reports) == 1
    text = reports[0]
    assert text.startswith("watchdog: GET /api/v1/open/address/batch/0 still running after")
    assert "thread request-1 of pid " in text
    assert " serve > tests/test_watchdog.py:" in text  # file:line function, outermost first
    assert " stuck_in_the_database > threading.py:" in text  # where it waits
    assert "tprv-not-in-the-log" not in text  # a stack shows code, never a value
    assert dog.check(time.monotonic() + 2.0) == 0  # once only
    release.set()
    deadline = time.monotonic() + 5
    while not any("finished after" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_request_within_its_deadline_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    dog = Watchdog(log, every=3600)
    caplog.set_level(logging.WARNING, logger=log.name)
    with dog.watch("GET /fast", 5.0) as key:
        assert dog.check() == 0
        dog.extend(key, 60.0)  # a long poll's own wait
        assert dog.check(time.monotonic() + 30) == 0
    assert dog.check(time.monotonic() + 120) == 0
    assert caplog.records == []


def test_all_threads_busy_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    dog = Watchdog(log, every=3600, capacity=2, saturated_after=1.0)
    caplog.set_level(logging.WARNING, logger=log.name)
    a = dog.begin("GET /a", 60)
    now = time.monotonic()
    dog.check(now + 5)
    b = dog.begin("GET /b", 60)
    dog.check(now + 5)  # both threads busy from here
    dog.check(now + 5.5)
    assert caplog.records == []
    dog.check(now + 6.5)
    dog.check(now + 7.0)
    busy = [r.getMessage() for r in caplog.records]
    assert len(busy) == 1
    assert busy[0].startswith("watchdog: all 2 request threads busy for")
    assert "GET /a" in busy[0] and "GET /b" in busy[0]
    dog.end(a)
    dog.end(b)


def test_the_api_watches_its_requests_with_the_callers_deadline() -> None:

    app = Flask("t")
    seen: dict[str, float] = {}

    @app.get("/x")
    def view() -> str:
        with timing.WATCHDOG._lock:
            (r,) = [r for r in timing.WATCHDOG._requests.values() if r.what == "GET /x"]
        seen["deadline"] = r.deadline
        return "ok"

    app.before_request(timing.start)
    app.teardown_request(timing.teardown)
    assert app.test_client().get("/x?secret=1", headers={"X-CC-Deadline": "7"}).status_code == 200
    assert seen["deadline"] == 7.0
    with timing.WATCHDOG._lock:
        assert all(r.what != "GET /x" for r in timing.WATCHDOG._requests.values())
