"""The authenticated serial link between the hot HSM (client) and the cold HSM (server).

Layers, each in its own module and each ignorant of the one above it:

- `port`: bytes. A pyserial port opened from a URL or device path, reopened after failures.
- `framing`: frames. COBS + CRC-32, ACK/NAK, retransmission, resynchronisation.
- `session` / `auth`: messages. Direction, counter, request id and a MAC on every message;
  replays and forgeries refused with a reason.
- `rpc` / `codec`: commands. `LinkClient.call(command, payload, timeout)` and
  `LinkServer(handlers)`, exactly once per request id.

Typical use::

    client = LinkClient.open(url, link_key, JsonCounterStore(state_dir / "link-counters.json"))
    answer = client.call("cosign", {...}, timeout=10.0)

    server = LinkServer.open(url, link_key, {"cosign": cosign, ...}, SqliteCounterStore(path))
    server.serve_forever()
"""

from cc_common.link.counters import (
    CounterStore,
    JsonCounterStore,
    MemoryCounterStore,
    SqliteCounterStore,
)
from cc_common.link.errors import (
    LinkAuthError,
    LinkBusy,
    LinkClosed,
    LinkEncodingError,
    LinkError,
    LinkErrorCode,
    LinkPortError,
    LinkRemoteError,
    LinkTimeout,
    LinkTooLarge,
)
from cc_common.link.rpc import Handler, LinkClient, LinkServer
from cc_common.link.settings import LinkConfig

__all__ = [
    "CounterStore",
    "Handler",
    "JsonCounterStore",
    "LinkAuthError",
    "LinkBusy",
    "LinkClient",
    "LinkClosed",
    "LinkConfig",
    "LinkEncodingError",
    "LinkError",
    "LinkErrorCode",
    "LinkPortError",
    "LinkRemoteError",
    "LinkServer",
    "LinkTimeout",
    "LinkTooLarge",
    "MemoryCounterStore",
    "SqliteCounterStore",
]
