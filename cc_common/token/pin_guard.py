"""A persistent PIN retry limit, which SoftHSM lacks (it refuses a wrong PIN, forever retryable).

The counter lives in a small JSON file next to the token directory. An attempt is counted
*before* the PIN reaches the token and forgiven only when the login succeeds (or fails for a
reason that is not the PIN), so killing the process mid-attempt cannot buy free guesses. A file
lock serialises attempts between processes. An unreadable state file fails closed (locked).
User and SO PINs have separate counters with the same limit; a locked SO counter can only be
cleared by an operator with access to the file system, after investigation.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cc_common.token.errors import PinIncorrect, TokenError, TokenLocked
from cc_common.token.types import PinRole

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class PinState:
    """Consecutive failed attempts per role."""

    user_failures: int = 0
    so_failures: int = 0

    def failures(self, role: PinRole) -> int:
        return self.user_failures if role is PinRole.USER else self.so_failures

    def with_failures(self, role: PinRole, n: int) -> PinState:
        if role is PinRole.USER:
            return PinState(n, self.so_failures)
        return PinState(self.user_failures, n)


class PinGuard:
    """Counts consecutive wrong PINs for one token and locks it at `limit`."""

    def __init__(self, path: Path, limit: int) -> None:
        if limit < 1:
            raise TokenError(f"pin_retry_limit must be at least 1, got {limit}")
        self.path = path
        self.limit = limit
        self._lock_path = path.with_name(path.name + ".lock")

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> PinState:
        """The current state; a missing file is a fresh token, a damaged one is locked."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            user, so = raw["user_failures"], raw["so_failures"]
            if not (isinstance(user, int) and isinstance(so, int) and user >= 0 and so >= 0):
                raise ValueError("bad counters")
        except FileNotFoundError:
            return PinState()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.error("PIN retry state %s is unreadable; treating the token as locked", self.path)
            return PinState(self.limit, self.limit)
        return PinState(user, so)

    def _write(self, state: PinState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {
            "version": STATE_VERSION,
            "user_failures": state.user_failures,
            "so_failures": state.so_failures,
        }
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def is_locked(self, role: PinRole = PinRole.USER) -> bool:
        return self.read().failures(role) >= self.limit

    @contextmanager
    def attempt(self, role: PinRole) -> Iterator[None]:
        """Guard one login: refuse if locked, count first, forgive on success.

        The body must raise our `PinIncorrect` for a wrong PIN; any other exception means the
        PIN was not judged, and the attempt is not counted.
        """
        with self._exclusive():
            before = self.read()
            failures = before.failures(role)
            if failures >= self.limit:
                raise TokenLocked(self._locked_message(role))
            self._write(before.with_failures(role, failures + 1))
            try:
                yield
            except PinIncorrect:
                left = self.limit - (failures + 1)
                log.warning("wrong %s PIN (%d tries left)", role.value, left)
                if left <= 0:
                    log.error("%s PIN retry limit reached: token locked", role.value)
                    raise PinIncorrect(
                        f"{role.value} PIN incorrect; retry limit reached, token locked"
                    ) from None
                raise PinIncorrect(f"{role.value} PIN incorrect ({left} tries left)") from None
            except BaseException:
                self._write(self.read().with_failures(role, failures))
                raise
            self._write(self.read().with_failures(role, 0))

    def clear(self) -> None:
        """Reset both counters (after the SO PIN was verified)."""
        with self._exclusive():
            self._write(PinState())

    def _locked_message(self, role: PinRole) -> str:
        if role is PinRole.USER:
            return (
                f"token locked after {self.limit} wrong user PINs; "
                "an operator must unlock it with the SO PIN"
            )
        return (
            f"SO PIN locked after {self.limit} wrong attempts; "
            f"an operator must investigate and clear {self.path}"
        )
