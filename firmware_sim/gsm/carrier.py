"""The carrier: an SMSC that routes messages between numbers.

Every modem, plain phone and gateway number is an *endpoint* attached to a named network
(the `carrier` of a modem entry). A submitted text is cut into segments (see `gsm7`); each
segment is scheduled separately, so it can be delayed, lost or duplicated on its own, and the
receiver reassembles. Settings live per network and change at runtime (control channel):

- the *sender's* network state decides whether a message can be submitted at all
  (`down`: no service, the modem answers `+CMS ERROR: 331`; `blackhole`: accepted, never
  delivered);
- the *recipient's* network decides delay, loss and duplication, and holds deliveries while
  it is `down` (store and forward: they go out when it comes back up).

Every event is appended to a JSONL log; bodies are written only when `log_bodies` is set.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from firmware_sim.errors import BadRequest, NetworkDown, UnknownNumber
from firmware_sim.gsm import gsm7
from firmware_sim.gsm.sms import Segment, check_number

log = logging.getLogger(__name__)

DUPLICATE_EXTRA_DELAY = 0.05  # a duplicate is a late retransmission, after the originals
LOG_MEMORY = 1000


class NetworkState(enum.Enum):
    """Service state of one carrier network."""

    UP = "up"
    DOWN = "down"
    BLACKHOLE = "blackhole"


class Event(enum.Enum):
    """What the carrier log records."""

    SUBMITTED = "submitted"
    REJECTED = "rejected"
    DELIVERED = "delivered"
    LOST = "lost"
    DUPLICATED = "duplicated"
    HELD = "held"
    UNDELIVERABLE = "undeliverable"


@dataclass(frozen=True)
class NetworkSettings:
    """How one network treats the segments it delivers."""

    delay_ms: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    state: NetworkState = NetworkState.UP

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    def changed(self, changes: dict[str, Any]) -> NetworkSettings:
        """A copy with `changes` applied, each one checked."""
        values: dict[str, Any] = {}
        for key, given in changes.items():
            value = given
            if value is None:
                continue
            if key == "delay_ms":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise BadRequest(f"delay_ms must be an integer >= 0, got {value!r}")
            elif key in ("loss", "duplicate"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise BadRequest(f"{key} must be a probability, got {value!r}")
                value = float(value)
                if not 0.0 <= value <= 1.0:
                    raise BadRequest(f"{key} must be between 0 and 1, got {value!r}")
            elif key == "state":
                try:
                    value = NetworkState(value)
                except ValueError:
                    states = ", ".join(s.value for s in NetworkState)
                    raise BadRequest(f"state must be one of {states}, got {value!r}") from None
            else:
                raise BadRequest(f"unknown carrier setting {key!r}")
            values[key] = value
        return replace(self, **values)


class Endpoint(Protocol):
    """Anything that owns a number: a modem, a plain phone, a gateway number."""

    number: str
    network: str

    def receive(self, seg: Segment) -> None: ...


@dataclass(order=True)
class _Scheduled:
    due: float
    order: int
    seg: Segment = field(compare=False)
    copy: int = field(default=0, compare=False)


class Carrier:
    """Routes segments between attached endpoints, with per-network delay, loss, duplication."""

    def __init__(
        self,
        defaults: NetworkSettings,
        log_path: Path | None = None,
        *,
        log_bodies: bool = False,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._defaults = defaults
        self._log_path = log_path
        self._log_bodies = log_bodies
        self._rng = rng or random.Random()  # simulation, not crypto
        self._clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._networks: dict[str, NetworkSettings] = {}
        self._queue: list[_Scheduled] = []
        self._held: list[Segment] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._refs: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=LOG_MEMORY)
        self._counters = {e.value: 0 for e in Event}
        self._log_lock = threading.Lock()

    # ----- topology and settings -------------------------------------------------------------

    def attach(self, endpoint: Endpoint) -> None:
        check_number(endpoint.number)
        with self._cond:
            if endpoint.number in self._endpoints:
                raise BadRequest(f"number {endpoint.number} is attached twice")
            self._endpoints[endpoint.number] = endpoint
            self._networks.setdefault(endpoint.network, self._defaults)

    def endpoint(self, number: str) -> Endpoint:
        try:
            return self._endpoints[number]
        except KeyError:
            raise UnknownNumber(f"no phone in the simulation has number {number}") from None

    def network_of(self, number: str) -> str | None:
        ep = self._endpoints.get(number)
        return ep.network if ep else None

    def network_state(self, network: str) -> NetworkState:
        with self._cond:
            return self._networks.get(network, self._defaults).state

    def settings(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {name: s.to_dict() for name, s in sorted(self._networks.items())}

    def configure(self, network: str | None = None, **changes: Any) -> dict[str, dict[str, Any]]:
        """Change settings of one network (or all when `network` is None); return all."""
        with self._cond:
            names = list(self._networks) if network is None else [network]
            if network is not None and network not in self._networks:
                known = ", ".join(sorted(self._networks))
                raise BadRequest(f"no network named {network!r} (known: {known})")
            updated = {n: self._networks[n].changed(changes) for n in names}
            self._networks.update(updated)
            for name, s in updated.items():
                log.info("network %s: %s", name, s.to_dict())
            self._release_held_locked()
            self._cond.notify_all()
            return {name: s.to_dict() for name, s in sorted(self._networks.items())}

    # ----- submission ----------------------------------------------------------------------

    def submit(self, sender: str, recipient: str, text: str, *, via: str | None = None) -> str:
        """Accept a text from `sender` (whose network is `via`, or the sender's own, if any).

        Raises `InvalidNumber` for a malformed recipient, `NetworkDown` when the sending
        network has no service. An unknown but well-formed recipient is accepted and logged
        as undeliverable, as a real SMSC would.
        """
        check_number(recipient)
        network = via or self.network_of(sender)
        msg_id = f"sms-{next(self._ids):06d}"
        parts = gsm7.segment(text)
        with self._cond:
            send_state = self._networks.get(network, self._defaults).state if network else None
            if send_state is NetworkState.DOWN:
                self._record(Event.REJECTED, msg_id, sender, recipient, network=network)
                raise NetworkDown(f"network {network} has no service")
            ref = self._refs.get(sender, self._rng.randrange(256))
            self._refs[sender] = (ref + 1) % 256
            now_wall = datetime.now(UTC)
            segs = [
                Segment(msg_id, sender, recipient, part, ref, len(parts.parts), i, now_wall)
                for i, part in enumerate(parts.parts, start=1)
            ]
            self._record(
                Event.SUBMITTED,
                msg_id,
                sender,
                recipient,
                network=network,
                chars=len(text),
                segments=len(segs),
                encoding=parts.encoding.value,
                body=text,
            )
            log.info(
                "SMS %s from %s to %s: %d chars, %d segment(s)",
                msg_id,
                sender,
                recipient,
                len(text),
                len(segs),
            )
            log.debug("SMS %s body: %r", msg_id, text)
            if recipient not in self._endpoints:
                self._record(Event.UNDELIVERABLE, msg_id, sender, recipient, reason="unknown")
                log.info("SMS %s to %s: no such subscriber", msg_id, recipient)
                return msg_id
            if send_state is NetworkState.BLACKHOLE:
                for seg in segs:
                    self._record_seg(Event.LOST, seg, reason=f"network {network} blackhole")
                return msg_id
            rnet = self._networks[self._endpoints[recipient].network]
            now = self._clock()
            for seg in segs:
                if self._rng.random() < rnet.loss:
                    self._record_seg(Event.LOST, seg, reason="loss")
                    continue
                due = now + rnet.delay_ms / 1000.0
                self._push(due, seg, 0)
                if self._rng.random() < rnet.duplicate:
                    self._push(due + DUPLICATE_EXTRA_DELAY + rnet.delay_ms / 1000.0, seg, 1)
                    self._record_seg(Event.DUPLICATED, seg)
            self._cond.notify_all()
        return msg_id

    def _push(self, due: float, seg: Segment, copy: int) -> None:
        heapq.heappush(self._queue, _Scheduled(due, next(self._order), seg, copy))

    # ----- delivery ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carrier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = self._clock()
                    if self._queue and self._queue[0].due <= now:
                        break
                    timeout = self._queue[0].due - now if self._queue else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                item = heapq.heappop(self._queue)
                seg = item.seg
                ep = self._endpoints[seg.recipient]
                state = self._networks[ep.network].state
                if state is NetworkState.DOWN:
                    self._held.append(seg)
                    self._record_seg(Event.HELD, seg, reason=f"network {ep.network} down")
                    continue
                if state is NetworkState.BLACKHOLE:
                    self._record_seg(Event.LOST, seg, reason=f"network {ep.network} blackhole")
                    continue
            self._deliver(ep, seg)

    def _deliver(self, ep: Endpoint, seg: Segment) -> None:
        try:
            ep.receive(seg)
        except Exception as exc:  # noqa: BLE001 (an endpoint failure must not stop the carrier)
            log.warning("SMS %s to %s: receiver failed: %s", seg.message_id, seg.recipient, exc)
            self._record_seg(Event.UNDELIVERABLE, seg, reason=str(exc))
            return
        self._record_seg(Event.DELIVERED, seg)
        log.info(
            "SMS %s delivered to %s (segment %d/%d)",
            seg.message_id,
            seg.recipient,
            seg.seq,
            seg.total,
        )

    def _release_held_locked(self) -> None:
        keep: list[Segment] = []
        now = self._clock()
        for seg in self._held:
            net = self._networks[self._endpoints[seg.recipient].network]
            if net.state is NetworkState.DOWN:
                keep.append(seg)
            else:
                self._push(now + net.delay_ms / 1000.0, seg, 0)
        self._held = keep

    # ----- records -------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        with self._log_lock:
            return dict(self._counters)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._log_lock:
            entries = list(self._recent)
        return entries[-limit:] if limit else entries

    def _record_seg(self, event: Event, seg: Segment, **extra: Any) -> None:
        self._record(
            event,
            seg.message_id,
            seg.sender,
            seg.recipient,
            segment=f"{seg.seq}/{seg.total}",
            **extra,
        )

    def _record(self, event: Event, msg_id: str, sender: str, recipient: str, **extra: Any) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event.value,
            "id": msg_id,
            "from": sender,
            "to": recipient,
        }
        body = extra.pop("body", None)
        entry.update({k: v for k, v in extra.items() if v is not None})
        if body is not None and self._log_bodies:
            entry["body"] = body
        with self._log_lock:
            self._counters[event.value] += 1
            self._recent.append(entry)
            if self._log_path is not None:
                with self._log_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
