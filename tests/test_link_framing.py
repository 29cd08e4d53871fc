"""Unit tests of the link below the line: COBS/CRC frames, the codec, MACs, counters, the port.

Property tests (hypothesis) feed the frame decoder hostile bytes: it never raises, never yields
a frame whose CRC did not check, and finds every intact frame among garbage. The session tests
seal and open messages directly, without a line.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import zlib

import pytest
import serial
import serial.serialposix
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_common.link import codec
from cc_common.link.auth import Direction, MacKey, Refusal, ReplayWindow
from cc_common.link.counters import JsonCounterStore, MemoryCounterStore, SqliteCounterStore
from cc_common.link.errors import LinkEncodingError, LinkPortError, LinkRemoteError
from cc_common.link.framing import (
    CRC,
    HEADER,
    PROTOCOL_VERSION,
    CobsError,
    Frame,
    FrameDecoder,
    FrameType,
    Reject,
    bundle_payload,
    cobs_decode,
    cobs_encode,
    encode_frame,
    frame_body,
    split_bundle,
    wire_size,
)
from cc_common.link.port import SerialPort
from cc_common.link.rpc import decode_answer
from cc_common.link.session import HEAD, Kind, Message, Refused, Role, Session, parse_head
from cc_common.link.settings import LinkConfig

KEY = bytes(range(32))
frames_st = st.builds(
    Frame,
    st.sampled_from(list(FrameType)),
    st.integers(0, 0xFFFF),
    st.binary(max_size=600),
)


# -- COBS and frames ------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x00", b"\x05ab", b"\x03a\x00"])
def test_cobs_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(CobsError):
        cobs_decode(bad)


@given(frames_st)
def test_frame_round_trip(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert len(wire) <= wire_size(len(frame.payload))
    assert FrameDecoder().feed(wire) == [frame]


@given(st.lists(frames_st, max_size=5))
def test_decoder_accepts_any_split_of_the_stream(frames: list[Frame]) -> None:
    stream = b"".join(f.encode() for f in frames)
    decoder = FrameDecoder()
    out = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert out == frames


def _valid_segments(stream: bytes) -> set[bytes]:
    """Every delimited segment of `stream` that decodes and whose CRC-32 checks."""
    valid = set()
    for segment in stream.split(b"\x00"):
        try:
            raw = cobs_decode(segment)
        except CobsError:
            continue
        if len(raw) >= 8 and zlib.crc32(raw[:-4]) == CRC.unpack(raw[-4:])[0]:
            valid.add(raw)
    return valid


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_decoder_never_raises_and_yields_only_crc_checked_frames(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame=512)
    frames = []
    for i in range(0, len(data), chunk):
        frames += decoder.feed(data[i : i + chunk])
    valid = _valid_segments(data)
    for frame in frames:
        body = frame_body(frame)
        assert body + CRC.pack(zlib.crc32(body)) in valid


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(max_size=80), frames_st), max_size=6), st.binary(max_size=80))
def test_garbage_between_frames_is_skipped(parts: list[tuple[bytes, Frame]], tail: bytes) -> None:
    stream = b"".join(junk + frame.encode() for junk, frame in parts) + tail
    decoded = FrameDecoder().feed(stream)
    expected = [frame for _, frame in parts]
    # Garbage can only add frames if it happens to contain a valid one (CRC-checked).
    it = iter(decoded)
    assert all(any(got == want for got in it) for want in expected)


@given(st.binary(min_size=1, max_size=2000))
def test_decoder_survives_arbitrary_bytes_then_recovers(junk: bytes) -> None:
    decoder = FrameDecoder(max_frame=256)
    decoder.feed(junk)
    frame = Frame(FrameType.DATA, 7, b"after the storm")
    assert decoder.feed(frame.encode()) == [frame]


def test_oversize_frame_is_refused_and_the_next_frame_decodes() -> None:
    decoder = FrameDecoder(max_frame=100)
    big = Frame(FrameType.DATA, 1, b"x" * 200)
    small = Frame(FrameType.DATA, 2, b"ok")
    assert decoder.feed(big.encode() + small.encode()) == [small]
    assert decoder.rejects[Reject.OVERSIZE] == 1
    # An endless run without a delimiter is dropped as it arrives, not buffered.
    decoder.feed(b"\x01" * 100_000)
    assert decoder.feed(b"\x00" + small.encode()) == [small]
    assert decoder.rejects[Reject.OVERSIZE] == 2


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8))
def test_bundle_round_trip(payloads: list[bytes]) -> None:
    frame = Frame(FrameType.BUNDLE, 9, bundle_payload(payloads))
    (decoded,) = FrameDecoder().feed(frame.encode())
    assert decoded.type == FrameType.BUNDLE
    assert split_bundle(decoded.payload) == payloads


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"\x00\x05abc", b"\x00\x00", b"\x00\x01a\x00", b"\x00\x01a\x00\x00"],
    ids=["empty", "short-length", "overrun", "zero-length", "cut-length", "zero-after"],
)
def test_a_malformed_bundle_yields_nothing(payload: bytes) -> None:
    """Lengths that do not add up deliver no payload at all (not the ones before the fault)."""
    assert split_bundle(payload) is None


def test_bad_crc_is_counted_and_reported_for_a_nak() -> None:
    decoder = FrameDecoder()
    raw = frame_body(Frame(FrameType.DATA, 0x1234, b"payload"))
    damaged = raw[:-1] + bytes([raw[-1] ^ 0x10]) + CRC.pack(zlib.crc32(raw))
    assert decoder.feed(b"\x00" + cobs_encode(damaged) + b"\x00") == []
    assert decoder.rejects[Reject.BAD_CRC] == 1
    assert decoder.take_naks() == [0x1234]
    assert decoder.take_naks() == []


def test_bad_version_type_cobs_and_short_are_counted() -> None:
    def wire(raw: bytes) -> bytes:
        return b"\x00" + cobs_encode(raw + CRC.pack(zlib.crc32(raw))) + b"\x00"

    decoder = FrameDecoder()
    stream = (
        wire(bytes([PROTOCOL_VERSION + 1, 1, 0, 0]) + b"x")
        + wire(bytes([PROTOCOL_VERSION, 9, 0, 0]))
        + b"\x05ab\x00"
        + b"\x02a\x00"
    )
    assert decoder.feed(stream) == []
    assert decoder.rejects == {
        Reject.BAD_VERSION: 1,
        Reject.BAD_TYPE: 1,
        Reject.BAD_COBS: 1,
        Reject.SHORT: 1,
    }


# -- codec ----------------------------------------------------------------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.binary(max_size=300)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=20), inner, max_size=20)
    ),
    max_leaves=40,
)


@given(values)
def test_codec_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_codec_is_deterministic_and_compact() -> None:
    a = codec.encode({"b": 1, "a": [True, None, b"\x00" * 3]})
    b = codec.encode({"a": [True, None, b"\x00" * 3], "b": 1})
    assert a == b
    assert len(codec.encode({"amount": 150_000, "index": 3})) == 1 + 7 + 4 + 6 + 1
    assert len(codec.encode(b"t" * 300)) == 303


@given(st.binary(max_size=200))
def test_codec_decode_of_garbage_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(LinkEncodingError):
        codec.decode(data)


@pytest.mark.parametrize("value", [1.5, {1: "x"}, object(), {"a": {2, 3}}])
def test_codec_refuses_unsupported_values(value: object) -> None:
    with pytest.raises(LinkEncodingError):
        codec.encode(value)


# -- replay window, counters, session -------------------------------------------------------


def test_replay_window_accepts_each_counter_once_within_the_window() -> None:
    window = ReplayWindow(floor=10, size=8)
    assert window.check(10) == Refusal.STALE
    for counter in (12, 11, 15, 13):
        assert window.check(counter) is None
        window.accept(counter)
    assert window.check(12) == Refusal.REPLAYED
    assert window.check(14) is None
    window.accept(40)
    assert window.check(14) == Refusal.STALE
    assert window.check(39) is None
    assert window.check(40) == Refusal.REPLAYED


@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_file_counter_stores_persist_and_never_go_back(tmp_path, kind: str) -> None:
    cls = JsonCounterStore if kind == "json" else SqliteCounterStore
    path = tmp_path / f"counters.{kind}"
    store = cls(path)
    assert store.load("x") == 0
    store.save("x", 5)
    store.save("x", 3)
    assert store.load("x") == 5
    if kind == "sqlite":
        store.close()
    assert cls(path).load("x") == 5


def _pair(client_store=None, server_store=None) -> tuple[Session, Session]:
    client = Session(KEY, Role.CLIENT, client_store or MemoryCounterStore(), name="hot")
    server = Session(KEY, Role.SERVER, server_store or MemoryCounterStore(), name="cold")
    return client, server


def test_session_round_trip_and_overhead() -> None:
    client, server = _pair()
    wire = client.seal(Kind.REQUEST, 42, b"body")
    assert len(wire) == len(b"body") + 22  # short header: 1 + counter 1 + request id 4; MAC 16
    msg = server.open(wire)
    assert msg == Message(Direction.HOT_TO_COLD, Kind.REQUEST, 1, 42, b"body")


def test_mac_is_hmac_sha256_truncated_to_16_bytes() -> None:
    """The wire's MAC, whatever computes it: HMAC-SHA256 under the direction's key, first 16
    bytes (a peer of another version must keep accepting it)."""
    for direction in Direction:
        key = MacKey(bytes(range(32)), direction)
        for data in (b"", b"x", bytes(range(256)) * 3):
            want = hmac.new(key._key, data, hashlib.sha256).digest()[:16]
            assert key.tag(data) == want and key.verify(data, want)
            assert not key.verify(data, bytes(16))


def test_session_refuses_bad_mac_replay_reflection_and_garbage() -> None:
    client, server = _pair()
    wire = client.seal(Kind.REQUEST, 1, b"sign this")
    tampered = wire[:16] + bytes([wire[16] ^ 1]) + wire[17:]
    assert server.open(tampered) == Refused(Refusal.BAD_MAC, Kind.REQUEST, 1)
    assert isinstance(server.open(wire), Message)
    assert server.open(wire) == Refused(Refusal.REPLAYED, Kind.REQUEST, 1)
    # The server's own message reflected back at it, and the client's at the client.
    answer = server.seal(Kind.ANSWER, 1, b"ok")
    assert server.open(answer).reason == Refusal.WRONG_DIRECTION
    assert client.open(wire).reason == Refusal.WRONG_DIRECTION
    assert server.open(b"short").reason == Refusal.MALFORMED
    other = Session(os.urandom(32), Role.CLIENT, MemoryCounterStore())
    assert server.open(other.seal(Kind.REQUEST, 9, b"x")).reason == Refusal.BAD_MAC
    assert server.refusals == {
        Refusal.BAD_MAC: 2,
        Refusal.REPLAYED: 1,
        Refusal.WRONG_DIRECTION: 1,
        Refusal.MALFORMED: 1,
    }


def test_replay_after_restart_is_stale_and_sender_never_reuses_counters(tmp_path) -> None:
    client_store = JsonCounterStore(tmp_path / "hot.json")
    server_store = JsonCounterStore(tmp_path / "cold.json")
    client, server = _pair(client_store, server_store)
    old = client.seal(Kind.REQUEST, 1, b"a")
    assert isinstance(server.open(old), Message)
    server.commit()
    # Both ends restart from their files.
    client, server = _pair(
        JsonCounterStore(tmp_path / "hot.json"), JsonCounterStore(tmp_path / "cold.json")
    )
    assert server.open(old) == Refused(Refusal.STALE, Kind.REQUEST, 1)
    fresh = server.open(client.seal(Kind.REQUEST, 2, b"b"))
    assert isinstance(fresh, Message) and fresh.counter > 1


class _CountingStore(MemoryCounterStore):
    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[str, int]] = []

    def save(self, name: str, value: int) -> None:
        self.saves.append((name, value))
        super().save(name, value)


def test_receiver_writes_a_reservation_once_per_recv_reserve_messages() -> None:
    config = LinkConfig(recv_reserve=8)
    store = _CountingStore()
    client = Session(KEY, Role.CLIENT, MemoryCounterStore(), config, name="hot")
    server = Session(KEY, Role.SERVER, store, config, name="cold")
    for i in range(20):
        assert isinstance(server.open(client.seal(Kind.REQUEST, i, b"x")), Message)
        server.commit()
    # counters 1..20: reservations written on accepting 1, 10 and 19 (each before acting)
    assert store.saves == [("hot_to_cold.recv", 9), ("hot_to_cold.recv", 18)] + [
        ("hot_to_cold.recv", 27)
    ]


def test_replay_after_restart_with_batched_counter_writes_is_stale(tmp_path) -> None:
    """Every message accepted before a restart is stale after it, including those accepted
    after the last write and one whose counter jumped past the reservation."""
    config = LinkConfig(recv_reserve=8)
    client = Session(KEY, Role.CLIENT, MemoryCounterStore(), config, name="hot")
    server = Session(KEY, Role.SERVER, JsonCounterStore(tmp_path / "cold.json"), config)
    sent = []
    for i in range(12):
        sent.append(client.seal(Kind.REQUEST, i, b"x"))
        assert isinstance(server.open(sent[-1]), Message)
        server.commit()
    client.skip_send_counter(5000)  # e.g. the hot side restarted and skipped ahead
    sent.append(client.seal(Kind.REQUEST, 12, b"x"))
    assert server.open(sent[-1]).counter == 5001
    server.commit()
    sent.append(client.seal(Kind.REQUEST, 13, b"x"))  # accepted, not itself written
    assert isinstance(server.open(sent[-1]), Message)
    server.commit()

    restarted = Session(KEY, Role.SERVER, JsonCounterStore(tmp_path / "cold.json"), config)
    for i, wire in enumerate(sent):
        assert restarted.open(wire) == Refused(Refusal.STALE, Kind.REQUEST, i)
    # The sender's next counter is under the new floor: refused as stale but authentic (its
    # body is handed up), and the floor the refusal carries moves the sender on.
    refused = restarted.open(client.seal(Kind.REQUEST, 99, b"next"))
    assert refused.reason == Refusal.STALE and refused.body == b"next"
    client.skip_send_counter(restarted.highest_received)
    assert isinstance(restarted.open(client.seal(Kind.REQUEST, 100, b"next")), Message)
    # A forged message under the floor has no body: only authentic ones are handed up.
    forged = Session(os.urandom(32), Role.CLIENT, MemoryCounterStore()).seal(Kind.REQUEST, 1, b"")
    assert restarted.open(forged).body is None


def test_unauthenticated_refusal_is_passed_up_as_unauthenticated() -> None:
    client, server = _pair()
    msg = client.open(server.seal_unauthenticated_refusal(5, b"why"))
    assert isinstance(msg, Message) and not msg.authenticated and msg.request_id == 5


def test_session_refuses_a_short_link_key() -> None:
    with pytest.raises(ValueError):
        Session(b"short", Role.CLIENT, MemoryCounterStore())


# -- port -----------------------------------------------------------------------------------


class _FlakyPort:
    """A pyserial stand-in whose first incarnation breaks on the first read."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.in_waiting = 0

    def read(self, n: int) -> bytes:
        if self.broken:
            raise serial.SerialException("device reports readiness to read but returned no data")
        return b"z"

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


def test_port_reopens_with_backoff_after_a_failure() -> None:
    opened: list[_FlakyPort] = []
    failures = iter([True, True])

    def opener(url: str, baud: int, timeout: float) -> _FlakyPort:
        if len(opened) == 1 and next(failures, False):
            raise serial.SerialException("gone")  # the device is away for two attempts
        port = _FlakyPort(broken=not opened)
        opened.append(port)
        return port

    port = SerialPort("/dev/fake", opener=opener, backoff_min=0.001, read_timeout=0.001)
    assert port.read() == b""  # breaks, closes
    assert not port.is_open and not port.write(b"lost")
    for _ in range(200):
        data = port.read()
        if data:
            break
    assert data == b"z" and port.reopens == 1 and port.write(b"x")


def test_port_reads_a_tty_whole_and_fails_when_its_far_end_goes() -> None:
    """A device port (a pty here, as between the HSMs) is read by `select` and `os.read` of
    what waits: every byte arrives, in order, none twice; the far end closing fails the port
    (it is then reopened), as pyserial's own read would."""
    master, slave = os.openpty()
    port = SerialPort(os.ttyname(slave), read_timeout=0.01)
    os.close(slave)
    try:
        assert type(port._ser) is serial.serialposix.Serial  # the fast path is the one tested
        sent = bytes(range(256)) * 40  # more than one read takes
        os.write(master, sent[:5000])
        os.write(master, sent[5000:])
        got = bytearray()
        for _ in range(500):
            got += port.read()
            if len(got) >= len(sent):
                break
        assert bytes(got) == sent
        assert port.read() == b""  # nothing waits: the timeout
        os.close(master)
        master = -1
        for _ in range(100):
            port.read()
            if not port.is_open:
                break
        assert not port.is_open
    finally:
        if master >= 0:
            os.close(master)
        port.close()


def test_port_open_failure_is_a_link_error() -> None:
    with pytest.raises(LinkPortError, match="cannot open serial port"):
        SerialPort("/nonexistent/tty")


def test_default_config_fits_a_cosign_request_in_one_frame() -> None:
    assert LinkConfig().max_frame >= 8192


# -- acknowledgements riding on data frames, the short session header ------------------------

acked_frames_st = st.builds(
    Frame,
    st.sampled_from([FrameType.DATA, FrameType.BUNDLE]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=300),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=64).map(tuple),
)


@given(acked_frames_st)
def test_a_data_frame_carries_acknowledgements(frame: Frame) -> None:
    (decoded,) = FrameDecoder().feed(frame.encode())
    assert decoded == frame
    # the acknowledgements ride in front of the payload: 1 + 2 per seq
    plain = Frame(frame.type, frame.seq, frame.payload)
    assert len(frame_body(frame)) == len(frame_body(plain)) + 1 + 2 * len(frame.acks)


def test_malformed_acknowledgement_lists_are_dropped() -> None:
    decoder = FrameDecoder()

    def framed(first: int, payload: bytes) -> bytes:
        body = bytes((first, 0, 9)) + payload
        return b"\x00" + cobs_encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"

    assert decoder.feed(framed(0x31, b"\x02\x00\x01")) == []  # says 2 seqs, has 1
    assert decoder.feed(framed(0x31, b"\x00data")) == []  # an empty list is not sent
    assert decoder.feed(framed(0x31, b"\x41" + bytes(130))) == []  # more than 64
    assert decoder.feed(framed(0x32, b"\x01\x00\x01")) == []  # only data frames carry them
    assert decoder.feed(framed(0x61, b"data")) == []  # a version 2 header of another version
    assert decoder.feed(framed(0x2F, b"data")) == []  # an unknown type
    assert decoder.rejects[Reject.BAD_ACKS] == 3 and decoder.rejects[Reject.BAD_TYPE] == 2
    assert decoder.rejects[Reject.BAD_VERSION] == 1
    assert decoder.feed(framed(0x31, b"\x01\x00\x07data")) == [
        Frame(FrameType.DATA, 9, b"data", (7,))
    ]
    with pytest.raises(ValueError, match="only DATA and BUNDLE"):
        frame_body(Frame(FrameType.ACK, 1, b"", (2,)))


def test_the_short_header_round_trips_and_the_long_one_is_still_accepted() -> None:
    client, server = _pair()
    for _ in range(200):  # counters past one varint byte
        wire = client.seal(Kind.REQUEST, 0xFFFFFFFF, b"x")
        assert isinstance(server.open(wire), Message)
    assert len(wire) == 1 + 2 + 4 + 1 + 16 and wire[0] == 0x80 | 0x10 | Kind.REQUEST
    head = parse_head(wire)
    assert head == (Direction.HOT_TO_COLD, Kind.REQUEST, 200, 0xFFFFFFFF, 7)
    # a message in the long form (as a peer of the previous version seals it)
    data = HEAD.pack(Direction.HOT_TO_COLD, Kind.REQUEST, 201, 5) + b"old"
    old = data + client._send_key.tag(data)
    assert server.open(old) == Message(Direction.HOT_TO_COLD, Kind.REQUEST, 201, 5, b"old")


def test_a_version_1_frame_is_still_read_and_a_version_2_header_is_a_byte_shorter() -> None:
    body = (
        HEADER.pack(
            PROTOCOL_VERSION,
            FrameType.DATA,
            0x1234,
        )
        + b"payload"
    )
    old = b"\x00" + cobs_encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"
    frame = Frame(FrameType.DATA, 0x1234, b"payload")
    assert FrameDecoder().feed(old) == [frame]
    assert len(frame.encode()) == len(old) - 1
    damaged = body[:-1] + b"?" + CRC.pack(zlib.crc32(body))  # a NAK for either version
    decoder = FrameDecoder()
    decoder.feed(b"\x00" + cobs_encode(damaged) + b"\x00")
    assert decoder.take_naks() == [0x1234]


def test_the_answer_is_the_result_map_and_the_earlier_shape_still_reads() -> None:
    assert decode_answer(codec.encode({"s": b"x"})) == {"s": b"x"}
    assert decode_answer(codec.encode([0, {"s": b"x"}])) == {"s": b"x"}
    err = decode_answer(codec.encode([1, [704, "unknown channel"]]))
    assert isinstance(err, LinkRemoteError) and (err.code, err.message) == (704, "unknown channel")
    for bad in ([0, "x"], [2, {}], "x", [1, [704]]):
        with pytest.raises(LinkEncodingError, match="unknown shape"):
            decode_answer(codec.encode(bad))


def test_a_message_re_encoded_in_the_other_header_form_fails_its_mac() -> None:
    """The MAC covers the header as sent: the same counter and body under the other form,
    or with a non-minimal counter, is refused (so no form can replay the other's)."""
    client, server = _pair()
    wire = client.seal(Kind.REQUEST, 3, b"body")
    tag = wire[-16:]
    long_form = HEAD.pack(Direction.HOT_TO_COLD, Kind.REQUEST, 1, 3) + b"body" + tag
    assert server.open(long_form).reason == Refusal.BAD_MAC
    padded = wire[:1] + bytes((0x81, 0x00)) + wire[2:]  # counter 1 as two bytes
    assert server.open(padded) == Refused(Refusal.MALFORMED, None, None)
    assert isinstance(server.open(wire), Message)


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" + b"\xff" * 10 + bytes(20),  # counter longer than 63 bits
        b"\x91\x01\x00\x00\x00" + bytes(15),  # MAC cut short
        b"\x91\x80",  # too short for anything
    ],
)
def test_a_malformed_short_header_is_refused(data: bytes) -> None:
    _, server = _pair()
    refused = server.open(data)
    assert isinstance(refused, Refused) and refused.reason == Refusal.MALFORMED
