"""Webhook endpoints and their delivery: each endpoint's events POSTed in `seq` order.

Endpoints are registered by the operator (`custody webhook add`); `events.publish` queues one
delivery per matching endpoint in the event's own transaction. A deliverer claims whole
endpoints with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a compare-and-set UPDATE
everywhere), so several workers share the endpoints and never deliver one event twice at the
same time, and each endpoint receives its events in order: the queue stops at the first
failure. A failing endpoint is retried with exponential backoff (`webhook_backoff_initial`
doubling to `webhook_backoff_max`); a delivery still failing `webhook_retry_hours` (24) after
its first attempt is parked and the queue moves on; `custody webhook redeliver` queues parked
or delivered ones again. The POST happens outside any database transaction, and the deliverer
runs in its own thread, so a slow endpoint never holds up the watcher or the send pipeline.
A crash between an endpoint's 2xx and recording it sends that event again: receivers
deduplicate by (account_id, seq).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from cc_common.errors import CustodyError
from custody import events
from custody.db import rowcount, transaction
from custody.models import (
    Account,
    DeliveryStatus,
    Event,
    EventSide,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from custody.watcher import default_owner, is_postgres
from custody.webhook_signing import SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)


class WebhookUrlInvalid(CustodyError):
    """A webhook URL that is not an absolute http(s) URL."""

    code = 603


class WebhookNotFound(CustodyError):
    """No such webhook endpoint or delivery."""

    code = 604


@dataclass(frozen=True)
class WebhookSettings:
    """`[custody]` keys: webhook_timeout_seconds, webhook_backoff_initial,
    webhook_backoff_max, webhook_retry_hours, webhook_lease_seconds, webhook_interval."""

    timeout: float = 5.0
    backoff_initial: float = 2.0
    backoff_max: float = 3600.0
    retry_hours: float = 24.0
    lease_seconds: float = 60.0
    interval: float = 0.5
    per_step: int = 100

    @classmethod
    def from_config(cls, config: Config) -> WebhookSettings:
        s = config.section("custody")
        d = cls()
        return cls(
            timeout=s.float("webhook_timeout_seconds", d.timeout),
            backoff_initial=s.float("webhook_backoff_initial", d.backoff_initial),
            backoff_max=s.float("webhook_backoff_max", d.backoff_max),
            retry_hours=s.float("webhook_retry_hours", d.retry_hours),
            lease_seconds=s.float("webhook_lease_seconds", d.lease_seconds),
            interval=s.float("webhook_interval", d.interval),
        )


# ---------------------------------------------------------------------- operator actions


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlInvalid(f"webhook URL must be an absolute http(s) URL, got {url[:80]!r}")
    return url


def add_endpoint(
    s: Session, account_id: int, url: str, side: EventSide = EventSide.BOTH
) -> tuple[WebhookEndpoint, str]:
    """Register `url` for the account's events of `side`; returns it and its new secret."""
    if s.get(Account, account_id) is None:
        raise WebhookNotFound(f"no account {account_id}")
    secret = "whsec_" + secrets.token_hex(32)
    endpoint = WebhookEndpoint(account_id=account_id, url=check_url(url), side=side, secret=secret)
    s.add(endpoint)
    s.flush()
    return endpoint, secret


def remove_endpoint(s: Session, endpoint_id: int) -> None:
    endpoint = s.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.removed_at is not None:
        raise WebhookNotFound(f"no webhook endpoint {endpoint_id}")
    endpoint.removed_at = utcnow()


def redeliver(s: Session, *, delivery_id: int | None = None, endpoint_id: int | None = None) -> int:
    """Queue one delivery, or every parked one of an endpoint, again; returns how many."""
    q = update(WebhookDelivery)
    if delivery_id is not None:
        q = q.where(WebhookDelivery.id == delivery_id)
    elif endpoint_id is not None:
        q = q.where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.PARKED,
        )
    else:
        raise WebhookNotFound("name a delivery or an endpoint")
    n = rowcount(
        s.execute(q.values(status=DeliveryStatus.PENDING, attempts=0, first_attempt_at=None))
    )
    if delivery_id is not None and n == 0:
        raise WebhookNotFound(f"no webhook delivery {delivery_id}")
    if endpoint_id is not None:
        s.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(next_at=None)
        )
    return int(n)


# ---------------------------------------------------------------------- delivery


class _LostLease(Exception):
    """Another deliverer owns the endpoint now."""


class Deliverer:
    """Delivers due endpoints' queues; `step()` is called by its own worker thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: WebhookSettings | None = None,
        *,
        owner: str | None = None,
        http: requests.Session | None = None,
    ) -> None:
        self.factory = factory
        self.settings = settings or WebhookSettings()
        self.owner = owner or default_owner("webhooks")
        self.http = http or requests.Session()

    def _due(self, now: datetime) -> Any:
        pending = exists().where(
            WebhookDelivery.endpoint_id == WebhookEndpoint.id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        return and_(
            WebhookEndpoint.removed_at.is_(None),
            or_(WebhookEndpoint.next_at.is_(None), WebhookEndpoint.next_at <= now),
            or_(
                WebhookEndpoint.locked_until.is_(None),
                WebhookEndpoint.locked_until < now,
                WebhookEndpoint.locked_by == self.owner,
            ),
            pending,
        )

    def claim(self, limit: int = 10) -> list[int]:
        now = utcnow()
        until = now + timedelta(seconds=self.settings.lease_seconds)
        got: list[int] = []
        with transaction(self.factory) as s:
            q = select(WebhookEndpoint.id).where(self._due(now)).order_by(WebhookEndpoint.id)
            if is_postgres(s):
                q = q.with_for_update(skip_locked=True, of=WebhookEndpoint)
            for endpoint_id in s.execute(q.limit(limit)).scalars().all():
                res = s.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint_id, self._due(now))
                    .values(locked_by=self.owner, locked_until=until)
                )
                if rowcount(res) == 1:
                    got.append(endpoint_id)
        return got

    def step(self) -> int:
        """Deliver what is due now; returns how many events were delivered."""
        delivered = 0
        for endpoint_id in self.claim():
            try:
                delivered += self.deliver_endpoint(endpoint_id)
            except _LostLease:
                log.info("webhook endpoint %d: lease lost to another deliverer", endpoint_id)
        return delivered

    def _hold(self, s: Session, endpoint_id: int) -> WebhookEndpoint:
        until = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        res = s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.locked_by == self.owner)
            .values(locked_until=until)
        )
        if rowcount(res) != 1:
            raise _LostLease()
        endpoint = s.get(WebhookEndpoint, endpoint_id, populate_existing=True)
        assert endpoint is not None
        return endpoint

    def deliver_endpoint(self, endpoint_id: int) -> int:
        """Post the endpoint's pending events in seq order until one fails or none is left."""
        done = 0
        for _ in range(self.settings.per_step):
            with transaction(self.factory) as s:
                endpoint = self._hold(s, endpoint_id)
                url, secret = endpoint.url, endpoint.secret
                row = s.execute(
                    select(WebhookDelivery, Event)
                    .join(Event, Event.id == WebhookDelivery.event_id)
                    .where(
                        WebhookDelivery.endpoint_id == endpoint_id,
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                    )
                    .order_by(Event.seq)
                    .limit(1)
                ).first()
                if row is None:
                    endpoint.locked_by, endpoint.locked_until = None, None
                    return done
                delivery_id = row[0].id
                body = json.dumps(events.as_json(row[1]), sort_keys=True).encode()
            ok, result = self._post(url, secret, body)
            with transaction(self.factory) as s:
                endpoint = self._hold(s, endpoint_id)
                if not self._record(s, endpoint, delivery_id, ok, result):
                    return done
            done += int(ok)
        return done

    def _post(self, url: str, secret: str, body: bytes) -> tuple[bool, str]:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(secret, body),
        }
        try:
            r = self.http.post(url, data=body, headers=headers, timeout=self.settings.timeout)
        except requests.RequestException as exc:
            return False, type(exc).__name__
        return 200 <= r.status_code < 300, f"HTTP {r.status_code}"

    def _record(
        self, s: Session, endpoint: WebhookEndpoint, delivery_id: int, ok: bool, result: str
    ) -> bool:
        """Store one attempt's outcome; True if the queue may go on now."""
        d = s.get(WebhookDelivery, delivery_id, populate_existing=True)
        assert d is not None
        now = utcnow()
        d.attempts += 1
        d.last_attempt_at = now
        d.last_result = result[:200]
        d.first_attempt_at = d.first_attempt_at or now
        if ok:
            d.status = DeliveryStatus.DELIVERED
            d.delivered_at = now
            endpoint.next_at = None
            return True
        if now - d.first_attempt_at >= timedelta(hours=self.settings.retry_hours):
            d.status = DeliveryStatus.PARKED
            log.warning("webhook delivery %d parked after %d attempts", d.id, d.attempts)
            return True
        delay = min(
            self.settings.backoff_initial * 2 ** (d.attempts - 1), self.settings.backoff_max
        )
        endpoint.next_at = now + timedelta(seconds=delay)
        endpoint.locked_by, endpoint.locked_until = None, None
        log.info("webhook endpoint %d: %s; retry in %.0f s", endpoint.id, result, delay)
        return False
