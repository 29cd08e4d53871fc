"""The command layer: `LinkClient` (hot HSM) and `LinkServer` (cold HSM).

Only this layer knows what a command is; it sees messages, never bytes of the line.

Exactly-once: a request is identified by its request id. The client re-sends a request it got no
answer to (a fresh counter and MAC each time, so a re-send is not a replay); the server executes
a request id once, and answers a re-send with the answer it cached (or not at all while the
first copy is still executing). A request id reused for a different body is refused.

Bodies are `codec` values: a request is ``[command, payload]``, an answer the result map
(``[0, result]`` is accepted too, as earlier versions sent it) or ``[1, [code, message]]``, a
refusal ``[reason, highest counter accepted]``.

Counters after a restart (see `session.py`): a receiver's floor after a restart is its stored
reservation, possibly above the counters the peer sends next. The cold side answers a stale
request with an authenticated STALE refusal carrying its floor, and the hot side skips past it.
The hot side, for a stale but authentic message from the cold side that concerns a call it is
waiting for, sends an authenticated STALE refusal carrying *its* floor; the cold side skips past
it and re-sends the cached answer, if any. Each side also takes the floor from a stale but
authentic STALE refusal of the other (after both restarted): moving a sending counter forward is
all a replayed message can cause, and that is harmless.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cc_common.errors import CustodyError
from cc_common.link import codec
from cc_common.link.auth import Refusal
from cc_common.link.counters import CounterStore
from cc_common.link.errors import (
    LinkAuthError,
    LinkClosed,
    LinkEncodingError,
    LinkError,
    LinkErrorCode,
    LinkRemoteError,
    LinkTimeout,
)
from cc_common.link.framing import FrameLink
from cc_common.link.port import ByteStream, SerialPort
from cc_common.link.session import (
    REQUEST_ID_MOD,
    Kind,
    Message,
    Refused,
    Role,
    Session,
    group_body,
    split_group,
)
from cc_common.link.settings import LinkConfig

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# Wraps the execution of a group of requests (the cold HSM: one state transaction, so one
# commit); the group's answers leave only after it exits.
UnitOfWork = Callable[[], AbstractContextManager[object]]
MAX_GROUP = 32  # requests executed back to back, answered in one frame


class AnswerStatus(IntEnum):
    OK = 0
    ERROR = 1


def _open_port(url: str, config: LinkConfig) -> SerialPort:
    return SerialPort(url, baudrate=config.baudrate, read_timeout=config.read_timeout)


@dataclass
class _Call:
    command: str
    body: bytes
    request_id: int
    wake: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: LinkError | None = None
    resend_now: bool = False
    attempts: int = 0

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class LinkClient:
    """Sends commands to the cold HSM; thread-safe, many calls in flight at once."""

    def __init__(
        self,
        port: ByteStream,
        link_key: bytes,
        counters: CounterStore,
        config: LinkConfig | None = None,
        name: str = "link-client",
    ) -> None:
        self.config = config or LinkConfig()
        self.name = name
        self.session = Session(link_key, Role.CLIENT, counters, self.config, name)
        self.frames = FrameLink(
            port, self._on_payload, config=self.config, on_give_up=self._on_give_up, name=name
        )
        self._lock = threading.Lock()
        self._pending: dict[int, _Call] = {}
        self._next_id = random.randrange(REQUEST_ID_MOD)
        self.counts: Counter[str] = Counter()
        self.frames.start()

    @classmethod
    def open(
        cls,
        url: str,
        link_key: bytes,
        counters: CounterStore,
        config: LinkConfig | None = None,
        name: str = "link-client",
    ) -> LinkClient:
        """A client on the serial port at `url` (device path or pyserial URL)."""
        config = config or LinkConfig()
        return cls(_open_port(url, config), link_key, counters, config, name)

    def __enter__(self) -> LinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.frames.close()
        with self._lock:
            calls = list(self._pending.values())
        for call in calls:
            call.error = LinkClosed(f"{self.name}: link closed while {call.command!r} waited")
            call.wake.set()

    def stats(self) -> dict[str, int]:
        out = self.frames.stats()
        out.update(self.counts)
        out.update({f"refused {r.name.lower()}": n for r, n in self.session.refusals.items()})
        return out

    def call(self, command: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Run `command` on the cold HSM and return its answer.

        Raises `LinkRemoteError` (the handler's code and message), `LinkTimeout` (no answer
        within `timeout` seconds), `LinkAuthError` (the cold side refused our MAC) or another
        `LinkError`.
        """
        body = codec.encode([command, dict(payload)])
        start = time.monotonic()
        deadline = start + timeout
        with self._lock:
            call = _Call(command, body, self._new_request_id())
            self._pending[call.request_id] = call
        try:
            self._transmit(call)
            resend_at = time.monotonic() + self.config.resend_after
            while True:
                now = time.monotonic()
                if call.done:
                    break
                if now >= deadline:
                    self.counts["timeouts"] += 1
                    raise LinkTimeout(
                        f"link: no answer to {command!r} after {now - start:.2f}s "
                        f"(timeout {timeout:g}s, {call.attempts} attempt(s))"
                    )
                if call.resend_now or now >= resend_at:
                    call.resend_now = False
                    call.wake.clear()
                    if self.frames.closed:
                        raise LinkClosed(f"{self.name}: link is closed")
                    self._transmit(call)
                    resend_at = now + self.config.resend_after
                    continue
                call.wake.wait(min(deadline, resend_at) - now)
        finally:
            with self._lock:
                self._pending.pop(call.request_id, None)
        if call.error is not None:
            raise call.error
        assert call.result is not None
        # where a caller's time goes (the console, bench_cosign): the round trips, in all
        self.counts["answered calls"] += 1
        self.counts["answered calls us"] += int((time.monotonic() - start) * 1_000_000)
        return call.result

    def _new_request_id(self) -> int:
        """Caller holds `_lock`."""
        while True:
            rid = self._next_id
            self._next_id = (rid + 1) % REQUEST_ID_MOD
            if rid not in self._pending:
                return rid

    def _transmit(self, call: _Call) -> None:
        call.attempts += 1
        if call.attempts > 1:
            self.counts["re-sent requests"] += 1
            log.debug(
                "%s: re-sending %r (request id %d, attempt %d)",
                self.name,
                call.command,
                call.request_id,
                call.attempts,
            )
        self.frames.send(
            self.session.seal(Kind.REQUEST, call.request_id, call.body), tag=call.request_id
        )

    # -- reader thread -----------------------------------------------------------------------

    def _on_give_up(self, tag: object) -> None:
        with self._lock:
            call = self._pending.get(tag) if isinstance(tag, int) else None
        if call is not None:
            call.resend_now = True
            call.wake.set()

    def _on_payload(self, data: bytes) -> None:
        msg = self.session.open(data)
        if isinstance(msg, Refused):
            self._stale_from_cold(msg)
            return
        if msg.authenticated:
            self.session.commit()
        if msg.kind == Kind.ANSWERS:
            items = split_group(msg.body, msg.request_id)
            if items is None:
                log.warning("%s: malformed ANSWERS message from the cold side", self.name)
                return
            for request_id, body in items:
                self._dispatch(Message(msg.direction, Kind.ANSWER, msg.counter, request_id, body))
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        """Hand an authenticated answer or refusal to the call that awaits it."""
        with self._lock:
            call = self._pending.get(msg.request_id)
        if call is None or call.done:
            self.counts["late answers"] += 1
            log.debug(
                "%s: %s for request id %d, which no call awaits",
                self.name,
                msg.kind.name.lower(),
                msg.request_id,
            )
            return
        if msg.kind == Kind.ANSWER:
            self._answer(call, msg)
        elif msg.kind == Kind.REFUSAL:
            self._authenticated_refusal(call, msg)
        elif msg.kind == Kind.UNAUTH_REFUSAL:
            self._unauthenticated_refusal(call, msg)
        else:
            log.warning("%s: unexpected %s from the cold side", self.name, msg.kind.name)
            return
        call.wake.set()

    def _answer(self, call: _Call, msg: Message) -> None:
        try:
            answer = decode_answer(msg.body)
        except LinkEncodingError as exc:
            call.error = LinkEncodingError(f"link: undecodable answer to {call.command!r}: {exc}")
            return
        if isinstance(answer, LinkRemoteError):
            call.error = answer
        else:
            call.result = answer

    def _authenticated_refusal(self, call: _Call, msg: Message) -> None:
        try:
            reason, highest = decode_refusal(msg.body)
        except LinkEncodingError:
            log.warning("%s: undecodable refusal of %r", self.name, call.command)
            return
        log.info(
            "%s: cold side refused %r (request id %d): %s; re-sending",
            self.name,
            call.command,
            call.request_id,
            reason.text,
        )
        if reason == Refusal.STALE and highest is not None:
            self.session.skip_send_counter(highest)
        elif reason == Refusal.RID_CONFLICT:
            with self._lock:
                self._pending.pop(call.request_id, None)
                call.request_id = self._new_request_id()
                self._pending[call.request_id] = call
        call.resend_now = True

    def _stale_from_cold(self, refused: Refused) -> None:
        """An authentic cold message under our floor (we restarted): tell the cold side.

        Only for a call we are waiting for, so replayed old answers cause nothing. The cold
        side skips its counter past our floor and re-sends its cached answer; a stale STALE
        refusal also moves our own counter on (only ever forward), and the call is re-sent.
        """
        if refused.reason != Refusal.STALE or refused.body is None or refused.request_id is None:
            return
        if refused.kind == Kind.ANSWERS:
            for rid, _ in split_group(refused.body, refused.request_id) or []:
                self._refuse_stale(rid, Kind.ANSWER)
            return
        if refused.kind == Kind.REFUSAL:
            hint = _stale_hint(refused.body)
            if hint is not None:
                self.session.skip_send_counter(hint)
        self._refuse_stale(refused.request_id, refused.kind)

    def _refuse_stale(self, rid: int, kind: Kind | None) -> None:
        """Tell the cold side our floor, for a call we await (see `_stale_from_cold`)."""
        with self._lock:
            call = self._pending.get(rid)
        if call is None or call.done:
            return
        self.counts["stale cold messages refused"] += 1
        body = codec.encode([Refusal.STALE, self.session.highest_received])
        try:
            self.frames.send(self.session.seal(Kind.REFUSAL, rid, body))
        except LinkError as exc:
            log.warning("%s: cannot send a refusal: %s", self.name, exc)
        if kind == Kind.REFUSAL:
            call.resend_now = True
            call.wake.set()

    def _unauthenticated_refusal(self, call: _Call, msg: Message) -> None:
        try:
            reason = decode_refusal(msg.body)[0]
        except LinkEncodingError:
            reason = Refusal.MALFORMED
        self.counts["unauthenticated refusals"] += 1
        hint = " (the link keys differ?)" if reason == Refusal.BAD_MAC else ""
        call.error = LinkAuthError(
            f"link: the cold side refused {call.command!r}: {reason.text}{hint}"
        )


def _stale_hint(body: bytes) -> int | None:
    """The peer's floor from an authenticated ``[STALE, highest accepted]`` refusal body."""
    try:
        reason, highest = decode_refusal(body)
    except LinkEncodingError:
        return None
    return highest if reason == Refusal.STALE else None


# -- message bodies: every decoding raises `LinkEncodingError` and nothing else ------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_request(body: bytes) -> tuple[str, dict[str, Any]]:
    """``[command, payload]`` of a request body."""
    value = codec.decode(body)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], dict)
    ):
        raise LinkEncodingError("request is not [command, map]")
    return value[0], value[1]


def decode_answer(body: bytes) -> dict[str, Any] | LinkRemoteError:
    """The result of an answer (a map, or `[0, map]`), or the error of `[1, [code, message]]`."""
    value = codec.decode(body)
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and len(value) == 2 and _is_int(value[0]):
        status, result = value
        if status == AnswerStatus.OK and isinstance(result, dict):
            return result
        if (
            status == AnswerStatus.ERROR
            and isinstance(result, list)
            and len(result) == 2
            and _is_int(result[0])
            and isinstance(result[1], str)
        ):
            return LinkRemoteError(result[0], result[1])
    raise LinkEncodingError("link: answer of unknown shape")


def decode_refusal(body: bytes) -> tuple[Refusal, int | None]:
    """``[reason, highest counter accepted]`` of a refusal; the counter is None if absent/odd."""
    value = codec.decode(body)
    if not isinstance(value, list) or not value or not _is_int(value[0]):
        raise LinkEncodingError("link: refusal of unknown shape")
    try:
        reason = Refusal(value[0])
    except ValueError:
        raise LinkEncodingError(f"link: unknown refusal reason {value[0]}") from None
    highest = value[1] if len(value) == 2 and _is_int(value[1]) else None
    return reason, highest


@dataclass
class _Executed:
    digest: bytes
    expires: float
    answer: bytes | None = None  # None while executing


class LinkServer:
    """Serves commands from the hot HSM: one handler at a time, each request id once.

    Requests that arrived while one was executing run next as a group, back to back, inside
    one `unit_of_work` (the cold HSM's: one state transaction, so one commit and fsync for the
    group), and their answers leave together, in one frame. Each request is still handled on
    its own: a refusal answers only that request, and what a refusing handler records (a
    freeze) commits with the group. If the unit itself fails (its commit), every request of the
    group is answered with an internal error, since nothing of it was saved.
    """

    def __init__(
        self,
        port: ByteStream,
        link_key: bytes,
        handlers: Mapping[str, Handler],
        counters: CounterStore,
        config: LinkConfig | None = None,
        name: str = "link-server",
        unit_of_work: UnitOfWork | None = None,
    ) -> None:
        self.config = config or LinkConfig()
        self.name = name
        self.handlers = dict(handlers)
        self.unit_of_work: UnitOfWork = unit_of_work or nullcontext
        self.session = Session(link_key, Role.SERVER, counters, self.config, name)
        self.frames = FrameLink(port, self._on_payload, config=self.config, name=name)
        self._lock = threading.Lock()
        self._executed: OrderedDict[int, _Executed] = OrderedDict()
        self._queue: queue.Queue[Message | None] = queue.Queue()
        self._stopped = threading.Event()
        self._worker: threading.Thread | None = None
        self.counts: Counter[str] = Counter()

    @classmethod
    def open(
        cls,
        url: str,
        link_key: bytes,
        handlers: Mapping[str, Handler],
        counters: CounterStore,
        config: LinkConfig | None = None,
        name: str = "link-server",
        unit_of_work: UnitOfWork | None = None,
    ) -> LinkServer:
        """A server on the serial port at `url` (device path or pyserial URL)."""
        config = config or LinkConfig()
        port = _open_port(url, config)
        return cls(port, link_key, handlers, counters, config, name, unit_of_work)

    def start(self) -> None:
        """Serve in background threads (the reader and one executor)."""
        self._worker = threading.Thread(
            target=self._execute_loop, name=f"{self.name}-exec", daemon=True
        )
        self._worker.start()
        self.frames.start()

    def serve_forever(self) -> None:
        """Serve until `stop()` (from another thread or a signal handler)."""
        self.start()
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)
        self.frames.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)

    close = stop

    def __enter__(self) -> LinkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        out = self.frames.stats()
        out.update(self.counts)
        out.update({f"refused {r.name.lower()}": n for r, n in self.session.refusals.items()})
        return out

    # -- reader thread -----------------------------------------------------------------------

    def _on_payload(self, data: bytes) -> None:
        msg = self.session.open(data)
        if isinstance(msg, Refused):
            self._answer_refusal(msg)
            return
        if msg.kind == Kind.REFUSAL:
            self._hot_refusal(msg)
            return
        if msg.kind != Kind.REQUEST:
            log.warning("%s: ignored a %s from the hot side", self.name, msg.kind.name.lower())
            return
        digest = hashlib.blake2b(msg.body, digest_size=16).digest()
        now = time.monotonic()
        with self._lock:
            entry = self._executed.get(msg.request_id)
            if entry is None:
                self._executed[msg.request_id] = _Executed(
                    digest, now + self.config.answer_cache_ttl
                )
                self._prune(now)
        if entry is None:
            self._queue.put(msg)
        elif entry.digest != digest:
            self._send(
                Kind.REFUSAL,
                msg.request_id,
                codec.encode([Refusal.RID_CONFLICT, self.session.highest_received]),
            )
        elif entry.answer is None:
            self.counts["re-sent while executing"] += 1
            log.debug("%s: request id %d re-sent while executing", self.name, msg.request_id)
        else:
            self.counts["cached answers"] += 1
            log.info("%s: request id %d re-sent; answering from cache", self.name, msg.request_id)
            self._send(Kind.ANSWER, msg.request_id, entry.answer)

    def _hot_refusal(self, msg: Message) -> None:
        """The hot side refused our answer as stale (it restarted): continue above its floor
        and answer again from the cache. Nothing is executed."""
        hint = _stale_hint(msg.body)
        if hint is None:
            log.warning("%s: ignored a refusal from the hot side", self.name)
            return
        self.session.commit()
        self.session.skip_send_counter(hint)
        with self._lock:
            entry = self._executed.get(msg.request_id)
            answer = None if entry is None else entry.answer
        if answer is not None:
            self.counts["answers re-sent after a stale refusal"] += 1
            self._send(Kind.ANSWER, msg.request_id, answer)

    def _answer_refusal(self, refused: Refused) -> None:
        """Tell the hot side why its request was refused; never answer anything else."""
        if refused.kind == Kind.REFUSAL and refused.reason == Refusal.STALE and refused.body:
            hint = _stale_hint(refused.body)  # both sides restarted: move our counter on
            if hint is not None:
                self.session.skip_send_counter(hint)
            return
        if refused.kind != Kind.REQUEST or refused.request_id is None:
            return
        if refused.reason == Refusal.REPLAYED:
            with self._lock:
                known = refused.request_id in self._executed
            if known:
                return  # a duplicate of an accepted request, which will be answered
            # A counter we accepted for another request: the hot side's counters are behind.
        if refused.reason in (Refusal.STALE, Refusal.REPLAYED):
            body = codec.encode([Refusal.STALE, self.session.highest_received])
            self._send(Kind.REFUSAL, refused.request_id, body)
        elif refused.reason in (Refusal.BAD_MAC, Refusal.WRONG_DIRECTION):
            wire = self.session.seal_unauthenticated_refusal(
                refused.request_id, codec.encode([refused.reason, 0])
            )
            self._send_wire(wire)

    def _prune(self, now: float) -> None:
        """Drop old finished entries. Caller holds `_lock`."""
        while self._executed:
            rid, entry = next(iter(self._executed.items()))
            full = len(self._executed) > self.config.answer_cache_size
            if entry.answer is None or not (full or entry.expires < now):
                break
            del self._executed[rid]

    # -- executor thread ---------------------------------------------------------------------

    def _execute_loop(self) -> None:
        while True:
            group = self._next_group()
            if not group or self._stopped.is_set():
                return
            self.session.commit()
            answers = self._execute_group(group)
            with self._lock:
                for msg, answer in zip(group, answers, strict=True):
                    entry = self._executed.get(msg.request_id)
                    if entry is not None:
                        entry.answer = answer
            wires = self._seal_answers(
                [(msg.request_id, answer) for msg, answer in zip(group, answers, strict=True)]
            )
            try:
                self.frames.send_many(wires)
            except LinkError as exc:
                log.warning("%s: cannot send: %s", self.name, exc)

    def _seal_answers(self, items: list[tuple[int, bytes]]) -> list[bytes]:
        """The answers of a group as few messages as fit a frame: one ANSWER alone, several
        as ANSWERS (one counter and MAC for all)."""
        limit = self.frames.max_payload - 64
        chunks: list[list[tuple[int, bytes]]] = [[]]
        size = 0
        for item in items:
            cost = len(item[1]) + 8
            if chunks[-1] and (size + cost > limit or len(chunks[-1]) == MAX_GROUP):
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += cost
        return [
            self.session.seal(Kind.ANSWER, *chunk[0])
            if len(chunk) == 1
            else self.session.seal(Kind.ANSWERS, chunk[0][0], group_body(chunk))
            for chunk in chunks
        ]

    def _next_group(self) -> list[Message]:
        """The next request and those queued behind it (up to `MAX_GROUP`); empty to stop."""
        first = self._queue.get()
        if first is None:
            return []
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                break
            if msg is None:
                self._queue.put(None)  # stop after this group
                break
            group.append(msg)
        return group

    def _execute_group(self, group: list[Message]) -> list[bytes]:
        try:
            with self.unit_of_work():
                return [self._execute(msg) for msg in group]
        except Exception:
            log.exception("%s: saving a group of %d request(s) failed", self.name, len(group))
            failed = self._error(LinkErrorCode.HANDLER_FAILED, "internal error: state not saved")
            return [failed] * len(group)

    def _execute(self, msg: Message) -> bytes:
        try:
            command, payload = decode_request(msg.body)
        except LinkEncodingError as exc:
            return self._error(LinkErrorCode.ENCODING, f"link: undecodable request: {exc}")
        handler = self.handlers.get(command)
        if handler is None:
            return self._error(LinkErrorCode.UNKNOWN_COMMAND, f"unknown command {command!r}")
        self.counts["executed"] += 1
        try:
            result = handler(payload)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned a {type(result).__name__}, not a dict")
            answer = codec.encode(result)  # a map is a result: 2 bytes less than [OK, map]
        except CustodyError as exc:
            log.info("%s: %s refused: [%d] %s", self.name, command, exc.code, exc.message)
            return self._error(exc.code, exc.message)
        except Exception as exc:
            log.exception("%s: handler for %r failed", self.name, command)
            return self._error(
                LinkErrorCode.HANDLER_FAILED, f"{command}: internal error ({type(exc).__name__})"
            )
        if len(answer) + 64 > self.frames.max_payload:
            return self._error(LinkErrorCode.TOO_LARGE, f"{command}: answer too large")
        return answer

    @staticmethod
    def _error(code: int, message: str) -> bytes:
        return codec.encode([AnswerStatus.ERROR, [int(code), message]])

    def _send(self, kind: Kind, request_id: int, body: bytes) -> None:
        self._send_wire(self.session.seal(kind, request_id, body))

    def _send_wire(self, wire: bytes) -> None:
        try:
            self.frames.send(wire)
        except LinkError as exc:
            log.warning("%s: cannot send: %s", self.name, exc)
