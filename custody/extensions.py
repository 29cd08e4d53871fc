"""Extensions of the custody app, created unbound here and bound in `create_app`, and the
accessors views use to reach the app's settings (so views never import the app module).

State lives in `app.extensions`, never in these objects, so several apps (tests, workers) can
exist in one process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import send_intake
from custody.group_commit import GroupCommitter
from custody.hsm_client import HotHsm
from wallet_core.networks import Network

CONFIG_KEY = "CC_CONFIG"
SETTINGS_KEY = "CUSTODY_SETTINGS"


@dataclass(frozen=True)
class ApiSettings:
    """The `[custody]` settings the views need, read once."""

    min_confirmations: int = 1
    require_verified_batches: bool = True
    network: str = "regtest"

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        s = config.section("custody")
        network = "regtest"
        if config.has_section("deployment"):
            network = config.section("deployment").str("network", "regtest")
        return cls(
            min_confirmations=max(1, s.int("min_confirmations", 1)),
            require_verified_batches=s.bool("require_verified_batches", True),
            network=network,
        )


def settings() -> ApiSettings:
    """The current app's `ApiSettings` (set by `create_app`)."""
    return current_app.config[SETTINGS_KEY]


def app_config() -> Config:
    """The current app's whole configuration (set by `create_app`)."""
    return current_app.config[CONFIG_KEY]


class Database:
    """One SQLAlchemy session per request, closed (rolled back if uncommitted) at teardown."""

    key = "custody.db"
    reader_key = "custody.db.reader"

    def init_app(
        self, app: Flask, factory: sessionmaker[Session], reader_engine: Engine | None = None
    ) -> None:
        """`reader_engine`, when given, is an engine whose connections are in autocommit
        already (its own pool), so `reader` need not switch a pooled connection to
        autocommit and back on every request."""
        app.extensions[self.key] = factory
        app.extensions[self.reader_key] = reader_engine
        app.teardown_appcontext(self._close)

    @property
    def factory(self) -> sessionmaker[Session]:
        return current_app.extensions[self.key]

    @property
    def session(self) -> Session:
        s = g.get("_custody_session")
        if s is None:
            s = g._custody_session = self.factory()
        return s

    @property
    def reader(self) -> Connection:
        """An autocommit connection for the request's reads: no BEGIN/ROLLBACK round trips.

        Separate from `session` (whose transaction a write view commits), so a read never
        runs inside a write transaction by accident and vice versa.
        """
        c = g.get("_custody_reader")
        if c is None:
            reader_engine = current_app.extensions[self.reader_key]
            if reader_engine is not None:
                c = g._custody_reader = reader_engine.connect()
            else:
                engine = self.factory.kw["bind"]
                c = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                g._custody_reader = c
        return c

    def release_reader(self) -> None:
        """Give the request's reader connection back to the pool now, before the request
        waits for something that needs a connection itself (the group commit's leader):
        with one pool for both, requests that wait holding theirs could starve it."""
        c = g.pop("_custody_reader", None)
        if c is not None:
            c.close()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """The request's session, committed at the end of the block, rolled back on error."""
        s = self.session
        try:
            yield s
        except BaseException:
            s.rollback()
            raise
        s.commit()

    @staticmethod
    def _close(_exc: BaseException | None) -> None:
        s = g.pop("_custody_session", None)
        if s is not None:
            s.close()
        c = g.pop("_custody_reader", None)
        if c is not None:
            c.close()


class HsmProvider:
    """The hot HSM client: given to `create_app`, or made from configuration on first use."""

    key = "custody.hsm"

    def init_app(self, app: Flask, hsm: HotHsm | None, make: Callable[[], HotHsm]) -> None:
        app.extensions[self.key] = {"hsm": hsm, "make": make, "lock": threading.Lock()}

    @property
    def client(self) -> HotHsm:
        state = current_app.extensions[self.key]
        if state["hsm"] is None:
            with state["lock"]:
                if state["hsm"] is None:
                    state["hsm"] = state["make"]()
        return state["hsm"]


@dataclass
class _Window:
    start: float
    previous: int = 0
    current: int = 0


class RateLimiter:
    """Per-token sliding-window counter (approximated from two fixed windows), in process.

    With several gunicorn workers each keeps its own counters, so the effective limit is the
    configured one *per worker* (at most workers x limit in total). A shared store (Redis, the
    database) would make it exact; for a per-token abuse brake this is the accepted trade-off.
    """

    key = "custody.ratelimit"
    window = 60.0

    def init_app(self, app: Flask) -> None:
        app.extensions[self.key] = {"lock": threading.Lock(), "windows": {}}

    def hit(self, token_id: int, limit_per_minute: int, now: float | None = None) -> float | None:
        """Count one request; None when allowed, else seconds until a retry may succeed."""
        state = current_app.extensions[self.key]
        now = time.monotonic() if now is None else now
        with state["lock"]:
            windows: dict[int, _Window] = state["windows"]
            w = windows.get(token_id)
            if w is None:
                w = windows[token_id] = _Window(now)
            elapsed = now - w.start
            if elapsed >= 2 * self.window:
                w.start, w.previous, w.current = now, 0, 0
                elapsed = 0.0
            elif elapsed >= self.window:
                w.start, w.previous, w.current = w.start + self.window, w.current, 0
                elapsed -= self.window
            estimate = w.previous * (1.0 - elapsed / self.window) + w.current
            if estimate + 1 > limit_per_minute:
                return max(1.0, self.window - elapsed)
            w.current += 1
            return None


class TokenCache:
    """Recently authenticated tokens (by hash), kept `ttl` seconds to spare a query per call.

    A revoked or rotated token therefore stays usable for at most `ttl` seconds in each
    worker (default 2 s, `[custody] token_cache_seconds`; 0 disables the cache).
    """

    key = "custody.tokencache"

    def init_app(self, app: Flask, ttl: float) -> None:
        app.extensions[self.key] = {"ttl": ttl, "entries": {}, "lock": threading.Lock()}

    def get(self, digest: str) -> Any | None:
        state = current_app.extensions[self.key]
        hit = state["entries"].get(digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, digest: str, principal: Any) -> None:
        state = current_app.extensions[self.key]
        if state["ttl"] <= 0:
            return
        with state["lock"]:
            entries = state["entries"]
            if len(entries) > 10_000:
                entries.clear()
            entries[digest] = (principal, time.monotonic() + state["ttl"])


@dataclass(frozen=True)
class AccountInfo:
    """What the request path needs of an account that never changes once it has tokens."""

    network: Network
    cold_identity_pubkey: str


class AccountCache:
    """`AccountInfo` per account id, read once per process: these columns are written when
    the account is created, in the transaction that issues its first tokens, and never again,
    so no request can see them change (its status, which does change, is not kept here)."""

    key = "custody.accounts"

    def init_app(self, app: Flask) -> None:
        app.extensions[self.key] = {}

    def get(self, account_id: int, load: Callable[[], AccountInfo | None]) -> AccountInfo | None:
        entries: dict[int, AccountInfo] = current_app.extensions[self.key]
        info = entries.get(account_id)
        if info is None:
            info = load()
            if info is not None:
                entries[account_id] = info
        return info


class SendIntake:
    """The app's group committer of send requests (`custody.send_intake`), one per process."""

    key = "custody.send_intake"

    def init_app(self, app: Flask, factory: sessionmaker[Session]) -> None:
        app.extensions[self.key] = send_intake.committer(factory)

    @property
    def committer(self) -> GroupCommitter[send_intake.NewSend, send_intake.Intake]:
        return current_app.extensions[self.key]


db = Database()
token_cache = TokenCache()
account_cache = AccountCache()
send_intake_committer = SendIntake()
hsm_provider = HsmProvider()
limiter = RateLimiter()
