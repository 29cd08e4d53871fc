"""The addresses of the last few batches the cold HSM derived, so it derives each batch once.

A batch is derived for `prove_batch` (custody asks) and then again when the V-device asks
for it by SMS, usually minutes later; 1000 derivations are most of either command's CPU.
Public data only (addresses), keyed by the account's public facts and the sealed seed, so an
edited account record is a miss and derives (and fails) as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

BATCHES_KEPT = 16  # ~0.1 MB of addresses


class DerivedBatches:
    """A bounded map (least recently used go first), shared by the link and SMS threads."""

    def __init__(self, size: int = BATCHES_KEPT) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> list[str] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return list(hit)

    def put(self, key: Hashable, addresses: list[str]) -> None:
        with self._lock:
            self._items[key] = tuple(addresses)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
