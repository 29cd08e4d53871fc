"""Tuning of the link, one frozen dataclass shared by every layer.

Defaults suit a 115200-baud line with a handful of requests in flight; tests shorten the
timers. Everything here is about timing and sizes, nothing is secret.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkConfig:
    """Sizes and timers of the link (seconds, bytes)."""

    #: Emulated or real line rate: used to estimate when a frame has left the wire.
    baudrate: int = 115200
    #: Largest decoded frame (header + payload + CRC); bigger input is dropped as oversize.
    max_frame: int = 16384
    #: DATA frames sent and not yet acknowledged, per direction (pipelining depth).
    window: int = 32
    #: DATA frames waiting for room in the window before `send` refuses with `LinkBusy`.
    max_backlog: int = 1024
    #: Transmissions of one DATA frame before the framer gives up on it.
    max_tries: int = 8
    #: Retransmission timeout: first guess, floor and ceiling (adapted from measured ACKs).
    initial_rto: float = 0.5
    min_rto: float = 0.1
    max_rto: float = 1.5
    #: How long an acknowledgement waits to ride on a frame going the other way before it is
    #: sent in an ACK frame of its own (capped at half of `min_rto`).
    ack_delay: float = 0.03
    #: How long a received DATA frame is remembered to drop its link-level retransmissions.
    dedupe_horizon: float = 120.0
    #: Port read timeout: also the granularity of the retransmission timers.
    read_timeout: float = 0.02
    #: Re-send a request (fresh counter, same request id) when no answer came for this long.
    resend_after: float = 4.0
    #: Answers kept by the server for retransmitted requests: count and age.
    answer_cache_size: int = 4096
    answer_cache_ttl: float = 3600.0
    #: Out-of-order counters accepted below the highest one seen (pipelined retransmissions).
    replay_window: int = 128
    #: Counters reserved per write of the sender's counter store.
    counter_reserve: int = 1024
    #: Counters reserved per write of the receiver's accepted high-water mark: one fsync per
    #: this many messages received; after a restart the floor is up to this far ahead.
    recv_reserve: int = 1024
