"""The custody API's gunicorn workers are forked with no lock half-taken (custody/serve.py).

A readiness probe that imports `netrc` (requests does on every request) while the arbiter
forks its workers leaves a worker forked during that import with the module's import lock
taken by a thread it does not have: each of its requests that calls the hot HSM then waits
on `from netrc import ...` forever, with no log line (a merchant site's batch fetch timing
out in one demo run of ten under load). Here that import is made slow in the API's
processes, so a fork during it is certain: every request must still be answered in time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.harness import Deployment

SLOW_SITE = Path(__file__).parent / "slow_import"
DEADLINE = 4.0
CALLS = 12  # over the 2 workers x 4 threads: every thread of every worker serves one


def test_no_worker_inherits_a_lock_taken_during_its_fork(deployment: Any) -> None:
    d: Deployment = deployment(
        env={"PYTHONPATH": str(SLOW_SITE), "CC_TEST_SLOW_IMPORT": "netrc:2.0"}
    )
    d.cli("db", "upgrade", "--dir", str(d.data_dir))
    d.start_cli("custody-api", "custody.cli", "serve")
    url = f"http://127.0.0.1:{d.port('custody')}/api/v1/health"

    def call(_: int) -> str:
        start = time.monotonic()
        try:
            # the hot HSM is not running: 503 at once, through the hot HSM client
            r = requests.get(url, headers={"X-CC-Deadline": str(DEADLINE)}, timeout=DEADLINE)
        except requests.Timeout:
            return f"no answer within {DEADLINE:g}s"
        return f"HTTP {r.status_code}" if time.monotonic() - start < DEADLINE else "late"

    with ThreadPoolExecutor(CALLS) as pool:
        answers = list(pool.map(call, range(CALLS)))
    assert answers == ["HTTP 503"] * CALLS
