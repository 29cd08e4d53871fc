"""The session layer: authenticated, replay-proof messages carried in frames.

A message (big-endian), as sent::

    0x80|direction<<4|kind:u8  counter:varint  request_id:u32  body  mac[16]

(the counter as LEB128, minimal: 3 bytes up to 2^21 messages, at most 9), and the first form,
still accepted::

    direction:u8  kind:u8  counter:u64  request_id:u32  body  mac[16]

The short header saves 6-8 bytes per message on a line that is the throughput ceiling; the
first byte tells the forms apart (the long form's is the direction, 1 or 2). The MAC (see
`auth.py`) covers every byte before it, under the sender's direction key, so a message re-
encoded in the other form, or with a non-minimal counter, fails it. A
receiver refuses, counts and logs (with the reason) a message that is malformed, comes from the
wrong direction, fails its MAC, or repeats / predates a counter it accepted; a refused message
changes nothing. Accepted counters are persisted by `commit()`, which the layer above calls
before it acts on a message, so a replay after a restart is still stale.

`commit()` does not write every accepted counter: like the sending counter, it writes a
*reservation* `highest accepted + LinkConfig.recv_reserve` whenever an accepted counter passes the
last one written, so one disk write (fsync) covers `recv_reserve` messages. The stored value is
always at or above every counter ever accepted (it is written before the message that passed it
is acted on), so after a restart, with the stored value as floor, every old message is still
stale. The cost: after a restart the floor may be above the peer's next counters. Towards the
cold side that was always handled (its authenticated STALE refusal makes the hot side skip
ahead); towards the hot side, the hot side refuses a stale but authentic answer with a REFUSAL of
its own carrying its floor, and the cold side skips ahead and answers again (see `rpc.py`).

`UNAUTH_REFUSAL` is the one unauthenticated kind: the cold side's answer to a request whose MAC
does not verify (it cannot authenticate to a peer whose key differs). It is only ever advisory:
it can end a pending call with a clear error, never produce a result.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from cc_common.link.auth import MAC_LEN, Direction, MacKey, Refusal, ReplayWindow
from cc_common.link.counters import CounterStore
from cc_common.link.settings import LinkConfig
from wallet_core import leb128

log = logging.getLogger(__name__)

HEAD = struct.Struct(">BBQI")
MESSAGE_OVERHEAD = HEAD.size + MAC_LEN
SHORT_FLAG = 0x80
REQUEST_ID = struct.Struct(">I")
# The short header at its smallest: flag byte, 1-byte counter, request id.
SHORT_OVERHEAD = 1 + 1 + REQUEST_ID.size + MAC_LEN
MAX_VARINT = 9  # 63 bits
MAX_GROUP_ITEMS = 255
MAX_COUNTER = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit
REQUEST_ID_MOD = 1 << 32


class Role(Enum):
    """The hot HSM is the client (sends requests), the cold HSM the server."""

    CLIENT = Direction.HOT_TO_COLD
    SERVER = Direction.COLD_TO_HOT


class Kind(IntEnum):
    REQUEST = 1
    ANSWER = 2
    REFUSAL = 3
    UNAUTH_REFUSAL = 4
    ANSWERS = 5  # several answers under one counter and MAC: `group_body`


@dataclass(frozen=True, slots=True)
class Message:
    """A message that passed every check (or an advisory `UNAUTH_REFUSAL`)."""

    direction: Direction
    kind: Kind
    counter: int
    request_id: int
    body: bytes

    @property
    def authenticated(self) -> bool:
        return self.kind != Kind.UNAUTH_REFUSAL


@dataclass(frozen=True, slots=True)
class Refused:
    """A message that failed a check; `kind`/`request_id` are as claimed (unverified).

    `body` is set only for a message whose MAC verified but whose counter was refused (stale or
    replayed): authentic, but possibly old, so it may only be used for something a replay
    cannot abuse (moving a counter forward).
    """

    reason: Refusal
    kind: Kind | None = None
    request_id: int | None = None
    body: bytes | None = field(default=None, compare=False)


class Session:
    """Seals outgoing and opens incoming messages for one end of the link. Thread-safe."""

    def __init__(
        self,
        link_key: bytes,
        role: Role,
        counters: CounterStore,
        config: LinkConfig | None = None,
        name: str = "link",
    ) -> None:
        self.config = config or LinkConfig()
        self.name = name
        self.send_direction: Direction = role.value
        self.recv_direction = self.send_direction.reverse
        self._send_key = MacKey(link_key, self.send_direction)
        self._recv_key = MacKey(link_key, self.recv_direction)
        self._store = counters
        self._send_name = f"{self.send_direction.name.lower()}.send"
        self._recv_name = f"{self.recv_direction.name.lower()}.recv"
        self._lock = threading.Lock()
        self._reserved = counters.load(self._send_name)
        self._next = self._reserved + 1
        # Every counter ever accepted is at or below the stored value (a reservation).
        self._persisted = counters.load(self._recv_name)
        self._window = ReplayWindow(self._persisted, self.config.replay_window)
        self.refusals: Counter[Refusal] = Counter()
        self._log_budget: dict[Refusal, tuple[float, int]] = {}

    @property
    def highest_received(self) -> int:
        return self._window.highest

    def seal(self, kind: Kind, request_id: int, body: bytes) -> bytes:
        """An authenticated message with the next counter of our direction."""
        with self._lock:
            counter = self._next
            self._next += 1
            if counter > self._reserved:
                self._reserved = min(counter + self.config.counter_reserve, MAX_COUNTER)
                self._store.save(self._send_name, self._reserved)
        if counter > MAX_COUNTER:
            raise OverflowError("link counter exhausted: re-pair the HSMs")
        data = short_head(self.send_direction, kind, counter, request_id) + body
        return data + self._send_key.tag(data)

    def seal_unauthenticated_refusal(self, request_id: int, body: bytes) -> bytes:
        """The advisory refusal for a peer whose MAC failed (no counter, zero MAC)."""
        data = short_head(self.send_direction, Kind.UNAUTH_REFUSAL, 0, request_id) + body
        return data + bytes(MAC_LEN)

    def skip_send_counter(self, past: int) -> None:
        """Continue above `past` (the peer said, authenticated, our counters were stale)."""
        with self._lock:
            if past >= self._next and past < MAX_COUNTER:
                log.warning(
                    "%s: sending counter behind the peer's; skipping to %d", self.name, past + 1
                )
                self._next = past + 1

    def open(self, data: bytes) -> Message | Refused:
        """Check an incoming message. Never raises; a refusal is counted and logged."""
        head = parse_head(data)
        if isinstance(head, str):
            return self._refuse(Refusal.MALFORMED, None, None, head)
        raw_dir, raw_kind, counter, request_id, size = head
        try:
            kind = Kind(raw_kind)
            direction = Direction(raw_dir)
        except ValueError:
            return self._refuse(Refusal.MALFORMED, None, request_id, "unknown kind or direction")
        body = data[size:-MAC_LEN]
        if direction != self.recv_direction:
            return self._refuse(Refusal.WRONG_DIRECTION, kind, request_id, direction.name)
        if kind == Kind.UNAUTH_REFUSAL:
            return Message(direction, kind, counter, request_id, body)
        if not self._recv_key.verify(data[:-MAC_LEN], data[-MAC_LEN:]):
            return self._refuse(Refusal.BAD_MAC, kind, request_id, "")
        with self._lock:
            reason = self._window.check(counter)
            if reason is None:
                self._window.accept(counter)
        if reason is not None:
            detail = f"counter {counter}, highest accepted {self._window.highest}"
            return self._refuse(reason, kind, request_id, detail, body)
        return Message(direction, kind, counter, request_id, body)

    def commit(self) -> None:
        """Make every accepted counter stale after a restart; call before acting on a message.

        Writes (durably) a reservation above the highest accepted counter only when that counter
        has passed the last reservation, so most calls write nothing.
        """
        with self._lock:
            highest = self._window.highest
            if highest <= self._persisted:
                return
            reserved = min(highest + self.config.recv_reserve, MAX_COUNTER)
            self._store.save(self._recv_name, reserved)
            self._persisted = reserved

    def _refuse(
        self,
        reason: Refusal,
        kind: Kind | None,
        request_id: int | None,
        detail: str,
        body: bytes | None = None,
    ) -> Refused:
        self.refusals[reason] += 1
        now = time.monotonic()
        start, logged = self._log_budget.get(reason, (now, 0))
        if now - start > 60:
            start, logged = now, 0
        self._log_budget[reason] = (start, logged + 1)
        level = logging.WARNING if logged < 20 else logging.DEBUG
        what = kind.name.lower() if kind is not None else "message"
        log.log(
            level,
            "%s: refused %s (request id %s): %s%s [%d refused for this reason]",
            self.name,
            what,
            request_id,
            reason.text,
            f" ({detail})" if detail else "",
            self.refusals[reason],
        )
        return Refused(reason, kind, request_id, body)


def short_head(direction: Direction, kind: Kind, counter: int, request_id: int) -> bytes:
    """The short message header: flag, direction and kind in one byte, the counter as a
    minimal LEB128 varint, the request id."""
    out = bytearray((SHORT_FLAG | direction << 4 | kind,))
    leb128.write(counter, out)
    return bytes(out) + REQUEST_ID.pack(request_id)


def parse_head(data: bytes) -> tuple[int, int, int, int, int] | str:
    """(direction, kind, counter, request id, header size) of a message of either form, or
    why it is malformed. Direction and kind are not checked here."""
    if data and data[0] & SHORT_FLAG:
        if len(data) < SHORT_OVERHEAD:
            return f"{len(data)} bytes"
        first = data[0]
        try:
            counter, at = leb128.read(data, 1, max_bytes=MAX_VARINT)
        except leb128.VarintError as exc:
            return f"counter {exc.reason}"
        if len(data) < at + REQUEST_ID.size + MAC_LEN:
            return f"{len(data)} bytes"
        (request_id,) = REQUEST_ID.unpack_from(data, at)
        return (first >> 4) & 0x07, first & 0x0F, counter, request_id, at + REQUEST_ID.size
    if len(data) < MESSAGE_OVERHEAD:
        return f"{len(data)} bytes"
    raw_dir, raw_kind, counter, request_id = HEAD.unpack_from(data)
    return raw_dir, raw_kind, counter, request_id, HEAD.size


def group_body(items: Sequence[tuple[int, bytes]]) -> bytes:
    """The body of an ANSWERS message whose header carries the first item's request id:
    ``n:u8``, then per answer ``[request_id:u32] length:varint body`` (the first without its
    id). The cold side's answers to a group of requests leave together; one counter and MAC
    for all of them instead of one each saves ~20 bytes per answer after the first."""
    if not 2 <= len(items) <= MAX_GROUP_ITEMS:
        raise ValueError(f"an ANSWERS message carries 2 to {MAX_GROUP_ITEMS} answers")
    out = bytearray((len(items),))
    for n, (request_id, body) in enumerate(items):
        if n:
            out += REQUEST_ID.pack(request_id)
        leb128.write(len(body), out)
        out += body
    return bytes(out)


def split_group(body: bytes, first_id: int) -> list[tuple[int, bytes]] | None:
    """The (request id, body) items of an ANSWERS message, or None if it is malformed."""
    if not body or not 2 <= body[0] <= MAX_GROUP_ITEMS:
        return None
    items: list[tuple[int, bytes]] = []
    at, end = 1, len(body)
    for n in range(body[0]):
        request_id = first_id
        if n:
            if at + REQUEST_ID.size > end:
                return None
            (request_id,) = REQUEST_ID.unpack_from(body, at)
            at += REQUEST_ID.size
        try:
            size, at = leb128.read(body, at, end=end, max_bytes=4)
        except leb128.VarintError:
            return None
        if at + size > end:
            return None
        items.append((request_id, body[at : at + size]))
        at += size
    return items if at == end else None
