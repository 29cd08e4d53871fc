"""Operator alerts: recorded in the database first, then sent by SMS through Twilio.

The real `twilio` client is used in every deployment; only `[twilio] base_url` differs (the
local Twilio-compatible gateway here, Twilio itself in production). A delivery failure is
recorded on the alert and logged, never raised: an alert must not break the operation that
raised it.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from sqlalchemy.orm import Session

from cc_common.config import Config
from cc_common.errors import CustodyError
from cc_common.text import printable
from custody.models import Alert

log = logging.getLogger(__name__)
# The twilio client logs each request (numbers and message text) at INFO: keep it quiet.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

SMS_TIMEOUT = 10.0
MAX_BODY = 600  # a few concatenated SMS segments at most


class AlertKind(enum.StrEnum):
    ACCOUNT_FROZEN = "account_frozen"
    ACCOUNT_UNFROZEN = "account_unfrozen"
    COLD_UNREACHABLE = "cold_unreachable"
    HOT_BALANCE_LOW = "hot_balance_low"
    SEND_FAILED = "send_failed"
    BATCH_FAILED = "batch_failed"


def _twilio_client(config: Config) -> Any:
    """A Twilio REST client pointed at `[twilio] base_url` (see platform notes, Twilio 9.13)."""
    from twilio.http.http_client import TwilioHttpClient  # noqa: PLC0415 (heavy import)
    from twilio.rest import Client  # noqa: PLC0415 (heavy import)

    s = config.section("twilio")
    client = Client(
        s.str("account_sid"),
        s.str("auth_token"),
        http_client=TwilioHttpClient(timeout=s.float("timeout", SMS_TIMEOUT)),
    )
    base_url = s.str("base_url", "")
    if base_url:
        client.api.base_url = base_url.rstrip("/")
    return client, s.str("from_number")


def send_sms(config: Config, to: str, body: str) -> str:
    """Send one SMS; returns the provider's message id. Raises on any failure."""
    client, from_number = _twilio_client(config)
    message = client.messages.create(to=to, from_=from_number, body=body[:MAX_BODY])
    return str(message.sid)


def raise_alert(
    session: Session,
    config: Config,
    kind: AlertKind,
    message: str,
    account_id: int | None = None,
) -> Alert:
    """Record an alert in `session` (flushed) and try to deliver it to `[phones] operator`."""
    kind = AlertKind(kind)  # a stored or configured text is checked here too
    message = printable(message)  # no control or bidi character reaches a phone or a log
    try:
        recipient = config.section("phones").str("operator")
    except CustodyError:
        recipient = ""
    alert = Alert(
        kind=kind.value, account_id=account_id, message=message, recipient=recipient, error=""
    )
    session.add(alert)
    session.flush()
    log.warning("alert %s (id %s) for account %s", kind.value, alert.id, account_id)
    if not recipient:
        alert.error = "no operator phone configured ([phones] operator)"
        return alert
    prefix = f"ChainCloud alert [{kind.value}]"
    if account_id is not None:
        prefix += f" account {account_id}"
    try:
        alert.provider_id = send_sms(config, recipient, f"{prefix}: {message}")
        alert.delivered = True
    except Exception as exc:  # noqa: BLE001 - any delivery failure is recorded, not raised
        alert.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("alert %s not delivered: %s", alert.id, type(exc).__name__)
    session.flush()
    return alert
