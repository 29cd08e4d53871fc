"""The operator console's Flask app: the dashboard, its refreshable parts, `/health`, `/metrics`.

It listens on its own address (`[operator] host`/`port`, loopback by default), apart from the
merchant-facing API, and every route but `/ready` wants the operator token: HTTP Basic with the
token as password (what a browser prompts for) or `Authorization: Bearer <token>` (what a
Prometheus scraper or a script sends). The page is rendered on the server; a small script of
our own (no CDN: nothing loads from outside the machine) re-fetches the parts every few
seconds and swaps them in, so a new deposit or a freeze shows without a reload.
"""

from __future__ import annotations

import base64
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, abort, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from cc_common.config import Config
from custody.operator.health import health_checks
from custody.operator.metrics import ConsoleCollector
from custody.operator.snapshot import Part, Snapshotter

PART_NAMES = ("processes", "hsms", "link", "sms", "accounts", "alerts", "journal", "chain")
SNAPSHOT_MAX_AGE = 1.0  # seconds: viewers and scrapes within this share one read


class SnapshotCache:
    """One snapshot at a time, reused for `max_age` seconds."""

    def __init__(self, take: Callable[[], dict[str, Part]], max_age: float) -> None:
        self._take = take
        self._max_age = max_age
        self._lock = threading.Lock()
        self._at = 0.0
        self._parts: dict[str, Part] | None = None

    def get(self) -> dict[str, Part]:
        with self._lock:
            now = time.monotonic()
            if self._parts is None or now - self._at > self._max_age:
                self._parts = self._take()
                self._at = now
            return self._parts


def _authorized(token: str) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() == "bearer":
        candidate = value.strip()
    elif scheme.lower() == "basic":
        try:
            candidate = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    else:
        return False
    return hmac.compare_digest(candidate.encode(), token.encode())


def create_console_app(config: Config, snapshotter: Snapshotter | None = None) -> Flask:
    """Build the console for `config` (the snapshotter is made from it unless given)."""
    token = config.section("operator").secret("token")
    refresh = config.section("operator").float("refresh_seconds", 2.0)
    if snapshotter is None:
        from custody.operator.wiring import snapshotter_for  # noqa: PLC0415 - opens the DB

        snapshotter = snapshotter_for(config)
    cache = SnapshotCache(snapshotter.take, SNAPSHOT_MAX_AGE)
    registry = CollectorRegistry()
    registry.register(ConsoleCollector(cache.get))

    app = Flask("custody.operator")
    app.config["CC_CONFIG"] = config

    @app.before_request
    def _require_token() -> Response | None:
        if request.path == "/ready" or _authorized(token):
            return None
        resp = jsonify({"error": {"code": 401, "message": "operator token required"}})
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Basic realm="ChainCloud operator"'
        return resp

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'"
        )
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return jsonify({"error": {"code": code, "message": exc.description}}), code

    @app.get("/ready")
    def ready() -> str:
        return "ok"

    @app.get("/")
    def dashboard() -> str:
        parts = cache.get()
        return render_template(
            "dashboard.html",
            parts=parts,
            names=PART_NAMES,
            problems=_problems(parts),
            refresh_ms=int(refresh * 1000),
            deployment=config.section("deployment").str("name", "local"),
        )

    @app.get("/parts")
    def parts_json() -> Response:
        """Every part as its rendered HTML fragment, for the page's refresh script."""
        parts = cache.get()
        body: dict[str, Any] = {
            "parts": {
                name: render_template("part.html", part=parts[name], name=name)
                for name in PART_NAMES
            },
            "problems": _problems(parts),
            "at": time.strftime("%H:%M:%S"),
        }
        return jsonify(body)

    @app.get("/parts/<name>")
    def one_part(name: str) -> str:
        if name not in PART_NAMES:
            abort(404, description=f"no part {name!r}; parts: {', '.join(PART_NAMES)}")
        return render_template("part.html", part=cache.get()[name], name=name)

    @app.get("/health")
    def health() -> tuple[Response, int]:
        checks = health_checks(cache.get())
        ok = all(c["ok"] for c in checks.values())
        return jsonify({"status": "ok" if ok else "failing", "checks": checks}), 200 if ok else 503

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _problems(parts: dict[str, Part]) -> list[str]:
    out: list[str] = []
    for name in PART_NAMES:
        part = parts[name]
        if part.error:
            out.append(f"{name}: {part.error}")
        out.extend(part.problems)
    return out
