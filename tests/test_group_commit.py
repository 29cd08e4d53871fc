"""Group commit: one commit serves every change made before it; a failed one fails them all."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from cc_common.group_commit import GroupCommit


def test_one_commit_covers_the_changes_made_before_it_and_a_failure_reaches_each() -> None:
    lock = threading.Lock()
    commits: list[int] = []
    fail = [False]

    def commit() -> None:
        if fail[0]:
            raise sqlite3.OperationalError("disk I/O error")
        commits.append(group_changes())

    group = GroupCommit(lock, commit)
    group_changes = lambda: changes[-1]  # noqa: E731 (the last change number made)
    changes: list[int] = []
    with lock:
        changes += [group.changed(), group.changed(), group.changed()]
    group.durable(changes[1])  # commits all three
    group.durable(changes[0])
    group.durable(changes[2])
    assert commits == [3]

    with lock:
        changes += [group.changed(), group.changed()]
    fail[0] = True
    with pytest.raises(sqlite3.OperationalError):
        group.durable(changes[3])
    fail[0] = False
    with pytest.raises(sqlite3.OperationalError, match="not saved"):
        group.durable(changes[4])  # carried by the failed commit: not saved either
    with lock:
        changes.append(group.changed())
    group.durable(changes[5])
    assert commits == [3, 6]
