"""A WSGI app for tests/test_http_worker.py: answers what it was asked, and can wait on a
gate file (a request kept in flight) or fail (an error with a body it must not log)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    body = environ["wsgi.input"].read()
    if path == "/wait":
        gate = Path(os.environ["CC_TEST_GATE"])
        end = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < end:
            time.sleep(0.02)
    if path == "/error":
        raise RuntimeError("the app failed")
    answer = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ["QUERY_STRING"],
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        "content_type": environ.get("CONTENT_TYPE"),
    }
    data = json.dumps(answer).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
