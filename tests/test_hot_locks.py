"""KeyedLocks: holders of one key run one at a time, other keys in parallel, nothing leaks."""

from __future__ import annotations

import threading

from hsm_hot.locks import KeyedLocks


def test_one_key_serializes_other_keys_do_not() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap: list[tuple[str, ...]] = []
    entered = threading.Event()
    release = threading.Event()

    def hold(key: str, name: str) -> None:
        with locks.held(key):
            inside.append(name)
            overlap.append(tuple(inside))
            entered.set()
            release.wait(5)
            inside.remove(name)

    first = threading.Thread(target=hold, args=("a", "a1"))
    first.start()
    assert entered.wait(5)
    twin = threading.Thread(target=hold, args=("a", "a2"))
    other = threading.Thread(target=hold, args=("b", "b1"))
    twin.start()
    other.start()
    other_seen = threading.Event()
    while not other_seen.is_set():  # b1 gets in while a1 still holds "a"; a2 does not
        other_seen.wait(0.01)
        if any("b1" in o for o in overlap):
            other_seen.set()
    assert ("a1", "b1") in overlap and not any("a2" in o and "a1" in o for o in overlap)
    release.set()
    for t in (first, twin, other):
        t.join(5)
    assert not any("a1" in o and "a2" in o for o in overlap)
    assert locks._locks == {}
