"""The cold HSM's two GSM modems: receiving, the channel protocol's worker, and a durable outbox.

Threads, all started by `hsm-cold serve`, none of which may bring the HSM down:
- one receiver per modem (SIM): `wait_for_messages`, messages handed to the worker queue;
  a modem that fails is retried with backoff, and said so in the log once per outage;
- one worker: `ChannelProtocol.handle`, one message at a time, in arrival order;
- one sender: the outbox (`sms_outbox` in the cold state, so an alert survives a restart),
  through a `FailoverSender` that tries the SIM the request came in on first. When no SIM can
  send, it keeps retrying with backoff and records one `sms_undeliverable` alert per outage.

Replies expire (a `QC` or a batch proof nobody waits for any more is dropped after the
freshness window); alerts do not. Bodies are logged at DEBUG at most.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from cc_common.config import Config, Section
from cc_common.errors import ConfigError
from cc_common.sms.errors import AllModemsFailed, InvalidNumber, InvalidText, SmsError
from cc_common.sms.failover import FailoverSender
from cc_common.sms.modem import GsmModem, IncomingSms
from hsm_cold.service import AlertKind, ColdService
from hsm_cold.sms_channel import (
    DEFAULT_CHANNEL_FRESHNESS,
    DEFAULT_CHANNEL_LIFETIME,
    ChannelPolicy,
    ChannelProtocol,
)
from hsm_cold.store import OutgoingSms

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0
RETRY_MIN = 1.0
RETRY_MAX = 60.0
RECEIVE_BACKOFF_MAX = 30.0
ALERT_TEXT_MAX = 300
# per destination number, alert kind and source: a flood of spoofed texts cannot flood
# phones, nor silence another source's alerts
ALERT_SMS_PER_HOUR = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;()'/_+=?!#%&<>*@-]")  # plain GSM 7-bit, no escapes


@dataclass(frozen=True)
class SmsSettings:
    """What `[hsm_cold]` and `[phones]` say about the SMS side."""

    ports: tuple[str, ...]
    numbers: tuple[str, ...]
    operator: str | None
    poll_interval: float
    policy: ChannelPolicy

    @classmethod
    def of(cls, config: Config) -> SmsSettings:
        s = config.section("hsm_cold")
        ports = tuple(_port_url(s, i) for i in range(len(_list(s, "modem_ports"))))
        numbers = tuple(str(n) for n in _list(s, "numbers"))
        policy = ChannelPolicy(
            lifetime=s.int("channel_lifetime", DEFAULT_CHANNEL_LIFETIME),
            freshness=s.int("channel_freshness", DEFAULT_CHANNEL_FRESHNESS),
            accept_plain=s.bool("accept_plain_channel_open", False),
        )
        if policy.lifetime < 1 or policy.freshness < 1:
            raise ConfigError("config: [hsm_cold] channel_lifetime / channel_freshness must be > 0")
        poll = s.float("sms_poll_interval", DEFAULT_POLL_INTERVAL)
        if poll <= 0:
            raise ConfigError("config: [hsm_cold] sms_poll_interval must be > 0")
        operator = None
        if config.has_section("phones"):
            phones = config.section("phones")
            operator = phones.str("operator") if phones.has("operator") else None
        return cls(ports, numbers, operator, poll, policy)


def _list(section: Section, key: str) -> list[object]:
    return section.list(key) if section.has(key) else []


def _port_url(section: Section, i: int) -> str:
    value = str(section.list("modem_ports")[i])
    if "://" in value:
        return value
    return str(Section(section.name, {"p": value}, section.data_dir).path("p"))


def sim_name(port_url: str) -> str:
    """`dev/modem-cold-a` -> `cold-a`: how the log and the status name a SIM."""
    name = PurePath(port_url).name or port_url
    return name.removeprefix("modem-")


def gsm_safe(text: str) -> str:
    """An alert as plain GSM 7-bit text, short enough for two SMS."""
    return _UNSAFE.sub("?", text)[:ALERT_TEXT_MAX]


RADIO_PROBE_INTERVAL = 30.0  # seconds between signal/registration probes of one SIM


class SmsService:
    """The modems, the protocol worker and the outbox of one `hsm-cold serve`."""

    def __init__(
        self,
        service: ColdService,
        settings: SmsSettings,
        modems: Sequence[GsmModem] | None = None,
    ) -> None:
        self.service = service
        self.store = service.store
        self.settings = settings
        if modems is None:
            modems = [
                GsmModem(
                    url,
                    own_number=settings.numbers[i] if i < len(settings.numbers) else None,
                    name=sim_name(url),
                    poll_interval=settings.poll_interval,
                    lazy=True,
                )
                for i, url in enumerate(settings.ports)
            ]
        if not modems:
            raise ConfigError("config: [hsm_cold] modem_ports lists no modem")
        self.modems = list(modems)
        n = len(self.modems)
        # one fail-over order per SIM, starting with it: replies prefer the SIM a request
        # came in on (each order then remembers its own last working SIM)
        self.senders = [
            FailoverSender([self.modems[(i + k) % n] for k in range(n)]) for i in range(n)
        ]
        self.protocol = ChannelProtocol(service, settings.policy, self._queue, self._count)
        self._incoming: queue.Queue[tuple[int, IncomingSms] | None] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._all_down = False
        self._alert_times: dict[tuple[str, str, str], deque[float]] = {}
        self._alert_lock = threading.Lock()
        self._radio: dict[str, dict[str, object]] = {}  # per SIM: signal, registration

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for i, modem in enumerate(self.modems):
            self._spawn(f"sms-recv-{modem.name}", self._receive_loop, i)
        self._spawn("sms-worker", self._work_loop)
        self._spawn("sms-send", self._send_loop)
        log.info(
            "SMS channel on %s (channel lifetime %d s, freshness %d s, plain forms %s)",
            ", ".join(m.name for m in self.modems),
            self.settings.policy.lifetime,
            self.settings.policy.freshness,
            "accepted" if self.settings.policy.accept_plain else "refused",
        )

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._incoming.put(None)
        for modem in self.modems:
            modem.close()  # wakes a receiver blocked in wait_for_messages
        for t in self._threads:
            t.join(timeout=10)

    # -- counters and queueing -------------------------------------------------------------------

    def _count(self, name: str) -> None:
        try:
            self.store.bump(name)
        except Exception:  # a counter never stops a message
            log.exception("could not count %s", name)

    def _queue(
        self, number: str, text: str, purpose: str, prefer: int, not_after: float | None
    ) -> None:
        self.store.queue_sms(number, text, purpose, prefer=prefer, not_after=not_after)
        self._wake.set()

    def on_text(self, number: str, text: str, purpose: str) -> None:
        """The service's signed word to a V-device: queued like a reply, kept until sent.
        Policy answers share the alerts' hourly budget per number: replaying a change the
        V-device once signed cannot make the cold HSM text without end."""
        kind = purpose.split(":", 1)[0]
        if kind == "policy_ack" and not self._alert_allowed((number, kind, "text")):
            self._count("alert_sms_suppressed")
            log.warning("policy answer to %s suppressed (over %d/h)", number, ALERT_SMS_PER_HOUR)
            return
        self._queue(number, text, purpose, 0, None)

    def on_alert(self, account: int | None, kind: str, message: str, source: str = "cold") -> None:
        """The service's alert hook: freezes go to the operator and the owner, refusals to
        the owner; undeliverable-SMS alerts are only recorded (no SIM would carry them).

        Each (destination, kind, source) has its own hourly budget: junk SMS from one number
        or `freeze` calls from the hot side cannot use up the budget of the cold HSM's own
        freeze alerts."""
        if kind == AlertKind.SMS_UNDELIVERABLE.value:
            return
        rec = self.service.store.get_account(account) if account is not None else None
        owner = rec.owner_phone if rec is not None and rec.owner_phone else None
        if kind == AlertKind.ACCOUNT_FROZEN.value:
            text = f"CC ALERT: account {account} frozen by cold HSM: {message}"
            targets = [self.settings.operator, owner]
        else:
            text = f"CC ALERT: account {account}: {message}"
            targets = [owner]
        for number in dict.fromkeys(t for t in targets if t):
            if self._alert_allowed((number, kind, source)):
                self._queue(number, gsm_safe(text), f"alert:{kind}", 0, None)
            else:
                self._count("alert_sms_suppressed")
                log.warning(
                    "alert SMS to %s suppressed (%s from %s: over %d/h)",
                    number,
                    kind,
                    source,
                    ALERT_SMS_PER_HOUR,
                )

    def _alert_allowed(self, key: tuple[str, str, str]) -> bool:
        now = time.monotonic()
        with self._alert_lock:
            times = self._alert_times.setdefault(key, deque())
            while times and now - times[0] > 3600:
                times.popleft()
            if len(times) >= ALERT_SMS_PER_HOUR:
                return False
            times.append(now)
            return True

    # -- receiving -------------------------------------------------------------------------------

    def _probe_radio(self, modem: GsmModem) -> None:
        """Signal (`AT+CSQ`) and registration (`AT+CREG?`), asked by the SIM's own receiver
        thread between polls, so a status request never waits on a modem."""
        try:
            quality = modem.signal_quality()
            self._radio[modem.name] = {
                "rssi": quality.rssi,
                "dbm": quality.dbm,
                "registered": modem.registered(),
                "probed_at": int(time.time()),
            }
        except SmsError:
            self._radio[modem.name] = {"registered": False, "probed_at": int(time.time())}

    def modem_status(self) -> list[dict[str, object]]:
        """Each SIM's radio state and its message counts (for `status` over the link)."""
        counters = self.store.counters()
        return [
            {
                "name": m.name,
                **self._radio.get(m.name, {}),
                "sent": counters.get(f"sent.{m.name}", 0),
                "received": counters.get(f"received_on.{m.name}", 0),
                "failed": counters.get(f"send_failed.{m.name}", 0)
                + counters.get(f"receive_errors.{m.name}", 0),
            }
            for m in self.modems
        ]

    def _receive_loop(self, index: int) -> None:
        modem = self.modems[index]
        backoff = self.settings.poll_interval
        failing = False
        next_probe = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_probe:
                self._probe_radio(modem)
                next_probe = time.monotonic() + RADIO_PROBE_INTERVAL
            try:
                found = modem.wait_for_messages(self.settings.poll_interval)
            except SmsError as exc:
                if self._stop.is_set():
                    return
                self._count(f"receive_errors.{modem.name}")
                if not failing:
                    log.warning("SIM %s cannot receive (%s); retrying", modem.name, exc.message)
                failing = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECEIVE_BACKOFF_MAX)
                continue
            except Exception:  # never let a receiver die
                log.exception("SIM %s: receive failed", modem.name)
                self._stop.wait(backoff)
                continue
            if failing:
                log.info("SIM %s receives again", modem.name)
                failing, backoff = False, self.settings.poll_interval
            for sms in found:
                self._incoming.put((index, sms))

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            item = self._incoming.get()
            if item is None:
                return
            index, sms = item
            try:
                self._count(f"received_on.{self.modems[index].name}")
                self.protocol.handle(sms.sender, sms.text, index)
            except Exception:  # one bad message never stops the channel
                log.exception("SMS from %s: handling failed", sms.sender)
                self._count("internal_errors")

    # -- sending ---------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a message queued from now on wakes us
            try:
                self._send_due()
                next_due = self.store.next_sms_due()
            except Exception:
                log.exception("SMS outbox failed")
                next_due = None
            wait = RETRY_MAX if next_due is None else max(0.0, next_due - time.time())
            self._wake.wait(min(wait, RETRY_MAX))

    def _send_due(self) -> None:
        for sms in self.store.due_sms(time.time()):
            if self._stop.is_set():
                return
            if sms.not_after is not None and time.time() > sms.not_after:
                self.store.sms_done(sms.id, "expired")
                self._count("send_expired")
                log.warning("%s to %s dropped: not sent in time", sms.purpose, sms.number)
                continue
            self._send_one(sms)

    def _send_one(self, sms: OutgoingSms) -> None:
        sender = self.senders[sms.prefer % len(self.senders)]
        try:
            receipt = sender.send(sms.number, sms.text)
        except (InvalidNumber, InvalidText) as exc:
            self.store.sms_done(sms.id, f"refused: {exc.message}")
            self._count("send_refused")
            log.error("%s to %s cannot be sent: %s", sms.purpose, sms.number, exc.message)
            return
        except AllModemsFailed as exc:
            for name, _ in exc.failures:
                self._count(f"send_failed.{name}")
            delay = min(RETRY_MAX, RETRY_MIN * 2**sms.attempts)
            self.store.sms_retry(sms.id, time.time() + delay)
            if not self._all_down:
                self._all_down = True
                why = "; ".join(f"{name}: {e.message}" for name, e in exc.failures)
                log.error("no SIM can send (%s); retrying with backoff", why)
                self.service.alert(
                    None, AlertKind.SMS_UNDELIVERABLE, f"no SIM can send SMS ({why}); retrying"
                )
            return
        except SmsError as exc:
            delay = min(RETRY_MAX, RETRY_MIN * 2**sms.attempts)
            self.store.sms_retry(sms.id, time.time() + delay)
            log.warning("%s to %s not sent (%s); retrying", sms.purpose, sms.number, exc.message)
            return
        if self._all_down:
            self._all_down = False
            log.info("SMS can be sent again (via %s)", receipt.modem)
        for name, why in receipt.failures:
            self._count(f"send_failed.{name}")
            log.warning("SIM %s could not send (%s); failed over to %s", name, why, receipt.modem)
        self._count(f"sent.{receipt.modem}")
        self.store.sms_done(sms.id, f"sent via {receipt.modem}")
        log.info("%s sent to %s via %s", sms.purpose, sms.number, receipt.modem)
