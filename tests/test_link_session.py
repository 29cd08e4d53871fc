"""The link end to end over real pseudo-terminals, through a relay that injects faults.

A `LinkServer` (the cold side) and a `LinkClient` (the hot side) each open a pty slave, as they
would a serial device; firmware_sim's `SerialLine` (the relay `firmware-sim serve` runs)
carries them at 921600 baud and flips bits, drops bytes, inserts garbage or cuts the line.
Handlers count their executions and check that what they got is what the client sent, so the
tests can assert: every request completes or times out clearly, nothing executes twice, nothing
executes from a damaged, replayed or forged frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from cc_common.errors import CustodyError
from cc_common.link import (
    JsonCounterStore,
    LinkAuthError,
    LinkClient,
    LinkConfig,
    LinkErrorCode,
    LinkRemoteError,
    LinkServer,
    LinkTimeout,
    MemoryCounterStore,
)
from cc_common.link.auth import MAC_LEN, Refusal
from cc_common.link.framing import Frame, FrameDecoder, FrameType, bundle_payload, split_bundle
from cc_common.link.session import Kind, group_body, parse_head, split_group
from firmware_sim.serial_relay import Direction, Fault, FaultKind, Noise, SerialLine
from tests.harness import wait_until

KEY = bytes.fromhex("6c696e6b206b657920666f722074657374732c206e6f7420666f722075736521")
CONFIG = LinkConfig(
    baudrate=921600,
    initial_rto=0.2,
    min_rto=0.05,
    max_rto=0.4,
    max_tries=6,
    resend_after=0.8,
)
# A restarted hot side that only a stale refusal can bring through within a call's timeout:
# its own timer would re-send after an hour, so a recovery that waited for it times out.
NO_TIMER_RESEND = replace(CONFIG, resend_after=3600.0)
pytestmark = pytest.mark.timeout(60)
A_TO_B, B_TO_A = Direction.HOT_TO_COLD, Direction.COLD_TO_HOT
CUT = Fault(FaultKind.CUT, seconds=3600)  # until cleared


class Refused(CustodyError):
    code = 4242


@dataclass
class ColdSide:
    """Handlers that record what they executed."""

    executed: Counter[bytes] = field(default_factory=Counter)
    intact: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cosign(self, payload: dict) -> dict:
        nonce, data, digest = payload["nonce"], payload["data"], payload["digest"]
        with self.lock:
            self.executed[nonce] += 1
            self.intact &= hashlib.sha256(nonce + data).digest() == digest
        return {"nonce": nonce, "sig": hashlib.sha256(data).digest() * 4 + b"\x01" * 22}

    def refuse(self, payload: dict) -> dict:
        raise Refused(f"user_tx_no {payload['user_tx_no']} reused")

    def crash(self, payload: dict) -> dict:
        raise RuntimeError("secret detail that must not cross the link")

    def slow(self, payload: dict) -> dict:
        time.sleep(payload["ms"] / 1000)
        return {}

    def handlers(self) -> dict:
        return {
            "cosign": self.cosign,
            "refuse": self.refuse,
            "crash": self.crash,
            "slow": self.slow,
        }


def cosign_request() -> dict:
    nonce, data = os.urandom(16), os.urandom(270)
    return {"nonce": nonce, "data": data, "digest": hashlib.sha256(nonce + data).digest()}


@dataclass
class Rig:
    line: SerialLine
    cold: ColdSide
    server: LinkServer
    client: LinkClient

    def call_many(self, n: int, threads: int = 4, timeout: float = 15.0) -> list[dict]:
        results: list[dict] = []
        errors: list[BaseException] = []

        def worker(count: int) -> None:
            for _ in range(count):
                req = cosign_request()
                try:
                    answer = self.client.call("cosign", req, timeout=timeout)
                except BaseException as exc:
                    errors.append(exc)
                    continue
                assert answer["nonce"] == req["nonce"]  # correlated by request id
                results.append(answer)

        pool = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert not errors, errors
        return results


def cold_server(line: SerialLine, tmp_path: Path, name: str) -> tuple[ColdSide, LinkServer]:
    """A started cold side on `line`'s cold end, its counters in `tmp_path`/cold.json."""
    cold = ColdSide()
    store = JsonCounterStore(tmp_path / "cold.json")
    server = LinkServer.open(str(line.cold.link), KEY, cold.handlers(), store, CONFIG, name=name)
    server.start()
    return cold, server


@pytest.fixture
def rig(tmp_path) -> Iterator[Rig]:
    line = SerialLine(tmp_path / "hot", tmp_path / "cold", CONFIG.baudrate, seed=7)
    line.start()
    cold, server = cold_server(line, tmp_path, "cold")
    client = LinkClient.open(
        str(line.hot.link), KEY, JsonCounterStore(tmp_path / "hot.json"), CONFIG, name="hot"
    )
    yield Rig(line, cold, server, client)
    client.close()
    server.stop()
    line.close()


def test_round_trip_and_errors_cross_the_link(rig: Rig) -> None:
    req = cosign_request()
    assert rig.client.call("cosign", req, timeout=5)["nonce"] == req["nonce"]

    with pytest.raises(LinkRemoteError) as info:
        rig.client.call("refuse", {"user_tx_no": 17}, timeout=5)
    assert (info.value.code, info.value.message) == (4242, "user_tx_no 17 reused")

    with pytest.raises(LinkRemoteError) as info:
        rig.client.call("crash", {}, timeout=5)
    assert info.value.code == LinkErrorCode.HANDLER_FAILED
    assert "secret" not in info.value.message and "RuntimeError" in info.value.message

    with pytest.raises(LinkRemoteError) as info:
        rig.client.call("launch_missiles", {}, timeout=5)
    assert info.value.code == LinkErrorCode.UNKNOWN_COMMAND


def test_concurrent_calls_are_pipelined_and_correlated(rig: Rig) -> None:
    rig.call_many(48, threads=8)
    assert sum(rig.cold.executed.values()) == 48
    assert set(rig.cold.executed.values()) == {1}


@pytest.mark.parametrize(
    "faults",
    [
        {"flip": 0.001},
        {"drop": 0.001},
        {"garbage": 0.2},
        {"flip": 0.0005, "drop": 0.0005, "garbage": 0.1},
    ],
    ids=["bit-flips", "drops", "garbage", "mixed"],
)
def test_requests_complete_exactly_once_under_line_faults(rig: Rig, faults: dict) -> None:
    rig.line.set_noise(Noise(**faults))
    rig.call_many(40, threads=4)
    counts = rig.line.fault_counts()
    assert sum(counts.values()) > 0, "the relay injected no fault"
    assert sum(rig.cold.executed.values()) == 40
    assert set(rig.cold.executed.values()) == {1}, "a request executed twice"
    assert rig.cold.intact, "a handler executed a damaged request"
    rejected = sum(v for k, v in rig.server.stats().items() if k.startswith("rejected"))
    rejected += sum(v for k, v in rig.client.stats().items() if k.startswith("rejected"))
    if "flip" in faults or "garbage" in faults:
        assert rejected > 0


def test_damaged_frame_with_a_valid_crc_executes_nothing(rig: Rig) -> None:
    """Noise that slips past the CRC is still refused by the MAC."""
    rig.line.start_capture(A_TO_B)
    rig.client.call("cosign", cosign_request(), timeout=5)
    (request,) = [
        f for f in FrameDecoder().feed(rig.line.captured(A_TO_B)) if f.type == FrameType.DATA
    ]
    payload = bytearray(request.payload)
    payload[40] ^= 0x04
    rig.line.put(A_TO_B, Frame(FrameType.DATA, request.seq ^ 0x55, bytes(payload)).encode())
    wait_until(lambda: rig.server.session.refusals[Refusal.BAD_MAC] == 1)
    assert sum(rig.cold.executed.values()) == 1


def test_replayed_frames_execute_nothing(rig: Rig) -> None:
    rig.line.start_capture(A_TO_B)
    for _ in range(3):
        rig.client.call("cosign", cosign_request(), timeout=5)
    captured = rig.line.captured(A_TO_B)
    requests = [f for f in FrameDecoder().feed(captured) if f.type == FrameType.DATA]
    assert len(requests) == 3

    # 1. The same bytes again: the framer recognises its own retransmissions and drops them.
    rig.line.put(A_TO_B, captured)
    wait_until(lambda: rig.server.frames.stats().get("duplicates", 0) >= 3)
    # 2. Re-framed with fresh sequence numbers: the session layer refuses the old counters.
    for i, frame in enumerate(requests):
        rig.line.put(A_TO_B, Frame(FrameType.DATA, frame.seq + 1000 + i, frame.payload).encode())
    refusals = rig.server.session.refusals
    wait_until(lambda: refusals[Refusal.REPLAYED] + refusals[Refusal.STALE] == 3)
    assert sum(rig.cold.executed.values()) == 3
    # The link still works, and the hot side never mistook a refusal for an answer.
    rig.client.call("cosign", cosign_request(), timeout=5)
    assert sum(rig.cold.executed.values()) == 4


def _busy_then(rig: Rig, calls: list[tuple[str, dict]]) -> list[dict | BaseException]:
    """Hold the cold executor with a slow request, queue `calls` behind it, and return each
    call's answer or exception (in order)."""
    out: list[dict | BaseException] = [RuntimeError("no answer")] * len(calls)

    def call(n: int, command: str, payload: dict) -> None:
        try:
            out[n] = rig.client.call(command, payload, timeout=10)
        except BaseException as exc:  # the test compares what each call got
            out[n] = exc

    slow = threading.Thread(target=call, args=(0, "slow", {"ms": 600}))
    slow.start()
    wait_until(lambda: rig.server.counts["executed"] >= 1)
    pool = [threading.Thread(target=call, args=(n, *c)) for n, c in enumerate(calls) if n]
    for t in pool:
        t.start()
    for t in [slow, *pool]:
        t.join(15)
    return out


def test_queued_requests_run_as_one_group_and_a_bad_one_refuses_only_itself(rig: Rig) -> None:
    units: list[int] = []

    @contextlib.contextmanager
    def unit() -> Iterator[None]:
        units.append(rig.server.counts["executed"])
        yield

    rig.server.unit_of_work = unit
    rig.line.start_capture(B_TO_A)
    goods = [cosign_request() for _ in range(4)]
    calls = [("slow", {}), ("cosign", goods[0]), ("refuse", {"user_tx_no": 9}), ("crash", {})]
    calls += [("cosign", g) for g in goods[1:]]
    out = _busy_then(rig, calls)

    for req, answer in zip(goods, [out[1], *out[4:]], strict=True):
        assert isinstance(answer, dict) and answer["nonce"] == req["nonce"]
    assert isinstance(out[2], LinkRemoteError) and out[2].code == 4242
    assert isinstance(out[3], LinkRemoteError) and out[3].code == LinkErrorCode.HANDLER_FAILED
    assert set(rig.cold.executed.values()) == {1} and len(rig.cold.executed) == 4
    # the slow request alone, then everything that queued behind it in one unit
    assert units == [0, 1], units
    # the group's answers in one ANSWERS message (one counter and MAC), so in one frame
    groups = [len(items) for items in _answer_groups(rig.line.captured(B_TO_A))]
    assert groups == [6], groups


def _answer_groups(wire: bytes) -> list[list[tuple[int, bytes]]]:
    """The items of every ANSWERS message on `wire` (in DATA or BUNDLE frames)."""
    out = []
    for f in FrameDecoder().feed(wire):
        if not f.type.carries_data:
            continue
        for payload in (split_bundle(f.payload) if f.type == FrameType.BUNDLE else None) or [
            f.payload
        ]:
            head = parse_head(payload)
            assert not isinstance(head, str), head
            if head[1] == Kind.ANSWERS:
                items = split_group(payload[head[4] : -MAC_LEN], head[3])
                assert items is not None
                out.append(items)
    return out


def test_a_failed_unit_of_work_answers_every_request_of_its_group_with_an_error(rig: Rig) -> None:
    @contextlib.contextmanager
    def failing_commit() -> Iterator[None]:
        yield
        if rig.server.counts["executed"] > 1:
            raise OSError("disk full")

    rig.server.unit_of_work = failing_commit
    out = _busy_then(
        rig, [("slow", {}), ("cosign", cosign_request()), ("refuse", {"user_tx_no": 1})]
    )
    assert out[0] == {}
    for answer in out[1:]:
        assert isinstance(answer, LinkRemoteError)
        assert answer.code == LinkErrorCode.HANDLER_FAILED and "not saved" in answer.message


def test_a_replayed_bundle_executes_and_answers_nothing(rig: Rig) -> None:
    rig.line.start_capture(A_TO_B)
    for _ in range(3):
        rig.client.call("cosign", cosign_request(), timeout=5)
    requests = [
        f for f in FrameDecoder().feed(rig.line.captured(A_TO_B)) if f.type == FrameType.DATA
    ]
    assert len(requests) == 3
    bundle = Frame(FrameType.BUNDLE, 4321, bundle_payload([f.payload for f in requests]))
    # Sent twice: the framer drops the copy; the session refuses each old counter inside.
    rig.line.put(A_TO_B, bundle.encode() * 2)
    refusals = rig.server.session.refusals
    wait_until(lambda: refusals[Refusal.REPLAYED] + refusals[Refusal.STALE] == 3)
    wait_until(lambda: rig.server.frames.stats().get("duplicates", 0) >= 1)
    assert sum(rig.cold.executed.values()) == 3

    # The same for the cold side's answers in a bundle: the hot side takes none of them.
    rig.line.start_capture(B_TO_A)
    _busy_then(rig, [("slow", {}), ("cosign", cosign_request()), ("cosign", cosign_request())])
    answers = [
        payload
        for f in FrameDecoder().feed(rig.line.captured(B_TO_A))
        if f.type.carries_data
        for payload in (split_bundle(f.payload) if f.type == FrameType.BUNDLE else [f.payload])
        or []
    ]
    # the slow one's ANSWER, then the other two in one ANSWERS message
    assert len(answers) == 2
    replay = Frame(FrameType.BUNDLE, 999, bundle_payload(answers))
    client_refusals = rig.client.session.refusals
    before = client_refusals[Refusal.REPLAYED] + client_refusals[Refusal.STALE]
    rig.line.put(B_TO_A, replay.encode())
    wait_until(
        lambda: client_refusals[Refusal.REPLAYED] + client_refusals[Refusal.STALE] >= before + 2
    )
    rig.client.call("cosign", cosign_request(), timeout=5)  # the link still works
    assert sum(rig.cold.executed.values()) == 6


def test_replay_after_a_cold_restart_executes_nothing(rig: Rig, tmp_path) -> None:
    rig.line.start_capture(A_TO_B)
    rig.client.call("cosign", cosign_request(), timeout=5)
    (request,) = [
        f for f in FrameDecoder().feed(rig.line.captured(A_TO_B)) if f.type == FrameType.DATA
    ]
    rig.server.stop()
    cold, server = cold_server(rig.line, tmp_path, "cold2")
    try:
        rig.line.put(A_TO_B, request.encode())
        wait_until(lambda: server.session.refusals[Refusal.STALE] == 1)
        assert not cold.executed
        rig.client.call("cosign", cosign_request(), timeout=5)
        assert sum(cold.executed.values()) == 1
    finally:
        server.stop()


def test_a_peer_with_the_wrong_key_gets_nothing_executed(rig: Rig) -> None:
    rig.client.close()
    impostor = LinkClient.open(
        str(rig.line.hot.link), os.urandom(32), MemoryCounterStore(), CONFIG, name="impostor"
    )
    try:
        start = time.monotonic()
        with pytest.raises(LinkAuthError, match="bad MAC"):
            impostor.call("cosign", cosign_request(), timeout=5)
        assert time.monotonic() - start < 3
    finally:
        impostor.close()
    assert not rig.cold.executed
    assert rig.server.session.refusals[Refusal.BAD_MAC] == 1


def test_a_cut_line_times_out_clearly_and_the_link_recovers(rig: Rig) -> None:
    rig.client.call("cosign", cosign_request(), timeout=5)
    rig.line.inject(CUT, Direction.BOTH)
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match=r"'cosign' after \d+\.\d\ds \(timeout 1\.2s"):
        rig.client.call("cosign", cosign_request(), timeout=1.2)
    # At the deadline, not after the framer's retries (6 x up to 0.4 s) or a late re-send; the
    # margin is for a loaded 2-core machine scheduling the waiting thread late.
    assert 1.2 <= time.monotonic() - start < 1.2 + 2.0
    rig.line.clear()
    rig.client.call("cosign", cosign_request(), timeout=10)
    # The timed-out request may still have executed once (its answer was lost): never twice.
    assert sum(rig.cold.executed.values()) in (2, 3)
    assert set(rig.cold.executed.values()) == {1}


def test_a_short_cut_during_calls_is_ridden_out(rig: Rig) -> None:
    done = threading.Event()

    def cut_briefly() -> None:
        rig.line.inject(CUT, Direction.BOTH)
        time.sleep(0.5)  # the fault being injected, not a wait for a condition
        rig.line.clear()
        done.set()

    threading.Thread(target=cut_briefly).start()
    rig.call_many(8, threads=4, timeout=15)
    done.wait(5)
    assert set(rig.cold.executed.values()) == {1}


def test_a_lost_answer_is_replayed_from_the_cache_not_re_executed(rig: Rig) -> None:
    req = cosign_request()
    rig.line.inject(CUT, B_TO_A)  # answers (and ACKs) from the cold side are lost
    result: dict = {}
    caller = threading.Thread(
        target=lambda: result.update(rig.client.call("cosign", req, timeout=15))
    )
    caller.start()
    wait_until(lambda: rig.server.counts["cached answers"] >= 1, timeout=10)
    rig.line.clear()
    caller.join(15)
    assert result["nonce"] == req["nonce"]
    assert rig.cold.executed[req["nonce"]] == 1
    assert rig.client.counts["re-sent requests"] >= 1


def test_a_re_send_while_executing_waits_for_the_single_execution(rig: Rig) -> None:
    rig.client.call("slow", {"ms": 2000}, timeout=10)
    assert rig.client.counts["re-sent requests"] >= 1
    assert rig.server.counts["executed"] == 1
    assert rig.server.counts["re-sent while executing"] >= 1


def test_a_hot_restart_with_lost_counters_recovers(rig: Rig) -> None:
    """The hot side lost its counter file: the cold side's authenticated STALE moves it on."""
    for _ in range(3):
        rig.client.call("cosign", cosign_request(), timeout=5)
    rig.client.close()
    client = LinkClient.open(str(rig.line.hot.link), KEY, MemoryCounterStore(), CONFIG, name="hot2")
    try:
        client.call("cosign", cosign_request(), timeout=5)
    finally:
        client.close()
    refusals = rig.server.session.refusals
    assert refusals[Refusal.STALE] + refusals[Refusal.REPLAYED] >= 1
    assert rig.server.frames.stats()["data in"] == 5  # one refused, one re-sent: no timeout
    assert set(rig.cold.executed.values()) == {1}


def test_a_hot_restart_above_the_cold_counters_recovers_and_refuses_replays(
    rig: Rig, tmp_path
) -> None:
    """The hot side restarts from its stored reservation, above the cold side's next counters:
    it refuses the (authentic) answer, the cold side skips past its floor and answers again
    from its cache. Nothing runs twice; old answers replayed to it do nothing."""
    rig.line.start_capture(B_TO_A)
    for _ in range(3):
        rig.client.call("cosign", cosign_request(), timeout=5)
    old_answers = rig.line.captured(B_TO_A)
    rig.client.close()
    hot_counters = JsonCounterStore(tmp_path / "hot.json")
    client = LinkClient.open(
        str(rig.line.hot.link), KEY, hot_counters, NO_TIMER_RESEND, name="hot2"
    )
    try:
        assert client.session.highest_received == 1 + CONFIG.recv_reserve  # written at 1
        req = cosign_request()
        assert client.call("cosign", req, timeout=5)["nonce"] == req["nonce"]
        assert client.counts["stale cold messages refused"] == 1
        assert rig.server.counts["answers re-sent after a stale refusal"] == 1
        stale_before = client.session.refusals[Refusal.STALE]
        rig.line.put(B_TO_A, old_answers)
        wait_until(lambda: client.session.refusals[Refusal.STALE] >= stale_before + 3)
        assert client.counts["stale cold messages refused"] == 1  # no call awaited them
        client.call("cosign", cosign_request(), timeout=5)
    finally:
        client.close()
    assert sum(rig.cold.executed.values()) == 5
    assert set(rig.cold.executed.values()) == {1}


def test_both_sides_restart_from_reserved_counters_and_recover(rig: Rig, tmp_path) -> None:
    rig.line.start_capture(A_TO_B)
    for _ in range(3):
        rig.client.call("cosign", cosign_request(), timeout=5)
    old_requests = rig.line.captured(A_TO_B)
    rig.client.close()
    rig.server.stop()
    # Each side's floor above everything the other sends next (larger reservations than the
    # sending ones): the first exchanges are stale both ways.
    JsonCounterStore(tmp_path / "hot.json").save("cold_to_hot.recv", 10_000)
    JsonCounterStore(tmp_path / "cold.json").save("hot_to_cold.recv", 20_000)
    cold, server = cold_server(rig.line, tmp_path, "cold2")
    hot_counters = JsonCounterStore(tmp_path / "hot.json")
    client = LinkClient.open(
        str(rig.line.hot.link), KEY, hot_counters, NO_TIMER_RESEND, name="hot2"
    )
    try:
        rig.line.put(A_TO_B, old_requests)
        wait_until(lambda: server.session.refusals[Refusal.STALE] >= 3)
        assert not cold.executed
        for _ in range(3):
            client.call("cosign", cosign_request(), timeout=5)
        assert client.counts["stale cold messages refused"] >= 1
        assert client.session.highest_received > 10_000
        assert server.session.highest_received > 20_000
    finally:
        client.close()
        server.stop()
    assert sum(cold.executed.values()) == 3
    assert set(cold.executed.values()) == {1}


def test_over_the_firmware_sim_serial_line(tmp_path) -> None:
    """The same guarantees with the relay's counted faults (as the control socket injects them)."""
    relay = pytest.importorskip("firmware_sim.serial_relay")
    line = relay.SerialLine(tmp_path / "hot", tmp_path / "cold", CONFIG.baudrate)
    line.start()
    cold = ColdSide()
    server = LinkServer.open(
        str(tmp_path / "cold"), KEY, cold.handlers(), MemoryCounterStore(), CONFIG, name="cold"
    )
    server.start()
    client = LinkClient.open(str(tmp_path / "hot"), KEY, MemoryCounterStore(), CONFIG, name="hot")
    try:
        both = relay.Direction.BOTH
        for kind in ("flip", "drop", "garbage"):
            line.inject(relay.Fault(relay.FaultKind(kind), count=3), both)
            for _ in range(6):
                client.call("cosign", cosign_request(), timeout=10)
        line.inject(relay.Fault(relay.FaultKind.CUT, seconds=0.5), both)
        for _ in range(3):
            client.call("cosign", cosign_request(), timeout=10)
    finally:
        client.close()
        server.stop()
        line.close()
    assert sum(cold.executed.values()) == 21
    assert set(cold.executed.values()) == {1} and cold.intact


def test_acknowledgements_ride_on_the_answer_and_alone_only_after_the_delay(rig: Rig) -> None:
    """A request answered within `ack_delay` is acknowledged by its answer's frame: no ACK
    frame crosses the line. One answered later gets an ACK frame once the delay is up (so the
    hot side does not retransmit it), then its answer."""
    server_counts, client_counts = rig.server.frames.counts, rig.client.frames.counts
    delay = min(CONFIG.ack_delay, CONFIG.min_rto / 2)
    rig.client.call("cosign", cosign_request(), timeout=5)  # settle the link
    wait_until(lambda: not rig.client.frames.stats()["unacked"])
    time.sleep(4 * delay)  # the answer's acknowledgement has left the hot side too
    acks_out, carried = server_counts["ack out"], server_counts["acks carried"]
    for _ in range(5):
        rig.client.call("cosign", cosign_request(), timeout=5)
    assert server_counts["ack out"] == acks_out, "an ACK frame went out on its own"
    assert server_counts["acks carried"] >= carried + 5
    assert client_counts["acks in data"] >= 5
    rig.client.call("slow", {"ms": int(delay * 1000) + 150}, timeout=5)
    assert server_counts["ack out"] == acks_out + 1


def test_an_answers_message_round_trips_and_malformed_ones_are_refused() -> None:
    items = [(7, b"first"), (0xFFFFFFFF, b""), (12, b"x" * 300)]
    body = group_body(items)
    assert split_group(body, 7) == items
    assert len(body) == 1 + (1 + 5) + (4 + 1) + (4 + 2 + 300)  # ids after the first, lengths
    for bad in (b"", b"\x01\x00", b"\x02\x00", body[:-1], body + b"\x00", b"\x04" + body[1:]):
        assert split_group(bad, 7) is None, bad
    with pytest.raises(ValueError, match="2 to 255"):
        group_body(items[:1])
