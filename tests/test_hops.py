"""Per-hop deadlines and slow/failed call logging (`cc_common.hops`), and the hot HSM's RPC
server cutting its link deadline to what its caller still waits."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from cc_common.hops import DEADLINE_HEADER, MARGIN, caller_deadline, timed, within_caller
from hsm_hot.rpc_server import RpcServer

log = logging.getLogger("tests.hops")


class Refusal(Exception):
    pass


def test_timed_logs_slow_and_failed_calls_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tests.hops")
    with timed(log, "a->b", "fast", deadline=10.0):
        pass
    with pytest.raises(Refusal), timed(log, "a->b", "refused", 10.0, answers=(Refusal,)):
        raise Refusal("no")
    assert caplog.records == []
    with pytest.raises(TimeoutError), timed(log, "a->b", "stalled", deadline=10.0):
        raise TimeoutError("no answer")
    with timed(log, "a->b", "slow", deadline=0.8):
        time.sleep(0.55)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("a->b stalled: failed: TimeoutError: no answer in 0.")
    assert lines[0].endswith("(deadline 10.0s)")
    assert lines[1].startswith("a->b slow: ok in 0.5") and len(lines) == 2


def test_inner_deadlines_are_shorter_than_the_callers() -> None:
    assert within_caller(20.0) == 20.0  # no caller said
    with caller_deadline(5.0):
        assert 5.0 - MARGIN - 0.1 < within_caller(20.0) <= 5.0 - MARGIN
        assert within_caller(2.0) == 2.0


def test_hot_rpc_server_hands_the_callers_deadline_to_its_calls() -> None:
    seen: list[float] = []

    def dispatch(method: str, params: object) -> dict[str, float]:
        seen.append(within_caller(20.0))  # what the relay would give the link
        return {}

    server = RpcServer("127.0.0.1", 0, "s" * 32, dispatch)
    server.start()
    try:
        host, port = server.address
        url = f"http://{host}:{port}/rpc"
        headers = {"Authorization": "Bearer " + "s" * 32}
        for waits in ("4.00", None):
            h = {**headers, **({DEADLINE_HEADER: waits} if waits else {})}
            r = requests.post(url, json={"method": "m", "params": {}}, headers=h, timeout=5)
            assert r.json() == {"result": {}}
    finally:
        server.stop()
    assert 3.0 < seen[0] <= 4.0 - MARGIN and seen[1] == 20.0
