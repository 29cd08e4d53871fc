"""Per-account sums over "the rows newer than t", answered from memory beside the SQL rows.

Every co-sign asks both HSMs' ledgers how much was signed (amounts, fees), and how many sends
or requests came, since some time; a SQL `SUM(...) WHERE account = ? AND at > ?` reads every
row of that window, so its cost grows with the day's sends: 0.36 ms per co-sign at 1 000 sends
in the last 24 hours, 33 ms at 100 000 (measured on the hot HSM, benchmarks/RESULTS.md), under
the lock every co-sign takes. Here the answer is a binary search and one subtraction of prefix
sums. SQL stays the record (this is rebuilt from it, and after a failed commit); only rows newer
than `floor` are held, and a question about older times returns None so that the caller asks
SQL.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable, Sequence

HELD = 2 * 86_400.0  # seconds before the newest row that the HSMs' sums load (their days + 1)


def floor_below(newest: float | None) -> float:
    """The floor of sums loaded `HELD` seconds back from the newest row (`MAX(at)`, None for
    no row: everything is held)."""
    return float("-inf") if newest is None else float(newest) - HELD


class _Series:
    """One account's rows in time order: (at, key) and prefix sums of their values."""

    def __init__(self, width: int) -> None:
        self.rows: list[tuple[float, int]] = []
        self.sums: list[tuple[int, ...]] = []  # sums[i]: totals of rows[: i + 1]
        self.zero = (0,) * width
        self.values: dict[int, tuple[int, ...]] = {}

    def add(self, at: float, key: int, values: tuple[int, ...]) -> None:
        self.values[key] = values
        if not self.rows or (at, key) >= self.rows[-1]:
            self.rows.append((at, key))
            last = self.sums[-1] if self.sums else self.zero
            self.sums.append(tuple(a + b for a, b in zip(last, values, strict=True)))
            return
        insort(self.rows, (at, key))  # the clock went back: rare, so rebuild from there
        self._resum(bisect_right(self.rows, (at, key)) - 1)

    def remove(self, key: int) -> None:
        if self.values.pop(key, None) is None:
            return
        for i in range(len(self.rows) - 1, -1, -1):  # a cancelled reservation is recent
            if self.rows[i][1] == key:
                del self.rows[i]
                self._resum(i)
                return

    def drop_until(self, before: float) -> None:
        """Forget rows at or before `before`."""
        cut = bisect_right(self.rows, (before, float("inf")))
        if cut:
            for _, key in self.rows[:cut]:
                self.values.pop(key, None)
            del self.rows[:cut]
            self._resum(0)

    def since(self, t: float) -> tuple[int, ...]:
        """Totals of the rows newer than `t`."""
        i = bisect_right(self.rows, (t, float("inf")))
        if i == len(self.rows):
            return self.zero
        total = self.sums[-1]
        before = self.sums[i - 1] if i else self.zero
        return tuple(a - b for a, b in zip(total, before, strict=True))

    def _resum(self, start: int) -> None:
        del self.sums[start:]
        last = self.sums[-1] if self.sums else self.zero
        for _, key in self.rows[start:]:
            last = tuple(a + b for a, b in zip(last, self.values[key], strict=True))
            self.sums.append(last)


class WindowSums:
    """Rows `(account, at, key, values)`; `since(account, t)` is the count and the sums of the
    values of the account's rows with `at > t`, or None if `t` is older than `floor` (every
    row newer than `floor` is held, older ones may not be)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.floor = float("inf")  # nothing known until `load`
        self._series: dict[int, _Series] = {}
        self._owner: dict[int, int] = {}  # key -> account

    def load(self, rows: Iterable[Sequence[float | int]], floor: float) -> None:
        """Start over from `rows` (`account, at, key, *values`): every row newer than `floor`."""
        self._series = {}
        self._owner = {}
        self.floor = floor
        for account, at, key, *values in rows:
            self.add(int(account), float(at), int(key), tuple(int(v) for v in values))

    def add(self, account: int, at: float, key: int, values: tuple[int, ...] = ()) -> None:
        series = self._series.get(account)
        if series is None:
            series = self._series[account] = _Series(self.width)
        series.add(at, key, values)
        self._owner[key] = account

    def remove(self, key: int) -> None:
        account = self._owner.pop(key, None)
        if account is not None:
            self._series[account].remove(key)

    def drop_until(self, before: float) -> None:
        """Forget rows at or before `before` (questions about older times then go to SQL)."""
        if before <= self.floor:
            return
        for series in self._series.values():
            for _, key in series.rows[: bisect_right(series.rows, (before, float("inf")))]:
                self._owner.pop(key, None)
            series.drop_until(before)
        self.floor = before

    def forget_before(self, before: float, step: float = 3_600.0) -> None:
        """`drop_until(before)` once `before` is `step` past the floor: forgetting re-sums the
        held rows, so it is done an hour at a time, not at every question."""
        if before > self.floor + step:
            self.drop_until(before)

    def since(self, account: int, t: float) -> tuple[int, tuple[int, ...]] | None:
        if t < self.floor:
            return None
        series = self._series.get(account)
        if series is None:
            return 0, (0,) * self.width
        i = bisect_right(series.rows, (t, float("inf")))
        return len(series.rows) - i, series.since(t)
