"""The cold console: what the officers see and type during init, restore and recovery signing.

Shares are shown only on a terminal (never into a pipe that may be a log) and read from the
console's standard input (on a terminal without echo). The one exception is drill mode
(`[hsm_cold] backup_drill_dir`): shares go to files in that directory, each marked as a drill
share, for tests and rehearsals on a non-production deployment (docs/recovery.md).
"""

from __future__ import annotations

import getpass
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from hsm_cold.backup import (
    ShareScheme,
    check_share,
    normalize_share,
    shares_needed,
    write_private,
)
from hsm_cold.errors import DrillModeOff, NotConfirmed

RETYPE_WORDS = 3
RETYPE_ATTEMPTS = 3
WORDS_PER_ROW = 4
DRILL_BANNER = (
    "# DRILL / TEST SHARE - NOT FOR PRODUCTION. Written by `hsm-cold init` because\n"
    "# [hsm_cold] backup_drill_dir is set. A production cold HSM shows its shares only on\n"
    "# the console. Destroy this file after the drill.\n"
)


class Console:
    """Line I/O with the officer; EOF means the officer walked away (refused, not assumed)."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    @property
    def is_terminal(self) -> bool:
        return self.stdin.isatty() and self.stdout.isatty()

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def clear(self) -> None:
        if self.stdout.isatty():
            self.stdout.write("\033[2J\033[H")
            self.stdout.flush()

    def ask(self, prompt: str, *, secret: bool = False) -> str | None:
        if secret and self.stdin.isatty():
            try:
                return getpass.getpass(prompt, stream=self.stdout)
            except EOFError:
                return None
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not self.stdin.isatty():
            self.say()  # no echo from a pipe: end the prompt's line
        return None if line == "" else line.rstrip("\r\n")

    def confirm(self, prompt: str) -> None:
        """The officer types `yes`, or nothing happens."""
        answer = self.ask(f"{prompt} Type 'yes' to go on: ")
        if answer is None or answer.strip().lower() != "yes":
            raise NotConfirmed("not confirmed at the cold console; nothing was done")


def _rows(words: Sequence[str]) -> list[str]:
    cells = [f"{n:>2}. {w:<10}" for n, w in enumerate(words, 1)]
    return [
        "  ".join(cells[i : i + WORDS_PER_ROW]).rstrip()
        for i in range(0, len(cells), WORDS_PER_ROW)
    ]


def show_shares(console: Console, shares: Sequence[str], scheme: ShareScheme) -> None:
    """One share at a time; each officer re-types a few words before the next one appears."""
    rng = secrets.SystemRandom()
    for n, share in enumerate(shares, 1):
        words = share.split()
        for attempt in range(RETYPE_ATTEMPTS):
            console.clear()
            console.say(
                f"=== Backup share {n} of {scheme.shares} ({scheme}: any "
                f"{scheme.threshold} rebuild the cold HSM's backup key) ==="
            )
            console.say("Officer: write these words down, in order, on the share card.")
            for row in _rows(words):
                console.say(row)
            if console.ask("Press Enter when written down. ") is None:
                raise NotConfirmed("the console closed while a share was shown")
            console.clear()
            positions = sorted(rng.sample(range(1, len(words) + 1), RETYPE_WORDS))
            if _retyped(console, n, words, positions):
                break
            console.say(f"Wrong word(s): share {n} is shown again (attempt {attempt + 2}).")
        else:
            raise NotConfirmed(f"share {n} was not re-typed correctly; run `hsm-cold init` again")
    console.clear()
    console.say(f"All {scheme.shares} shares shown and checked. They are not shown again.")


def _retyped(console: Console, n: int, words: Sequence[str], positions: Sequence[int]) -> bool:
    for p in positions:
        typed = console.ask(f"share {n}, word #{p}: ")
        if typed is None:
            raise NotConfirmed("the console closed during the share check")
        if typed.strip().lower() != words[p - 1]:
            return False
    return True


def drill_share_path(drill_dir: Path, n: int, total: int) -> Path:
    return drill_dir / f"DRILL-share-{n}-of-{total}.txt"


def write_drill_shares(drill_dir: Path, shares: Sequence[str], scheme: ShareScheme) -> list[Path]:
    """Drill mode: each share in its own 0600 file, under a banner saying what it is."""
    paths = []
    for n, share in enumerate(shares, 1):
        path = drill_share_path(drill_dir, n, scheme.shares)
        write_private(path, DRILL_BANNER + share + "\n")
        paths.append(path)
    return paths


def read_drill_share(path: Path, drill_dir: Path | None) -> str:
    """A share from a drill file: only with drill mode on, and only from the drill directory."""
    if drill_dir is None:
        raise DrillModeOff("shares from files are for drills only: set [hsm_cold] backup_drill_dir")
    if path.resolve().parent != drill_dir.resolve():
        raise DrillModeOff(f"{path} is not in the drill directory {drill_dir}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DrillModeOff(f"{path}: cannot be read ({exc})") from None
    return normalize_share(" ".join(x for x in lines if not x.startswith("#")))


def read_shares(console: Console, first_prompt: str = "") -> list[str]:
    """Shares typed one per line until the threshold the first share names, or an empty line."""
    if first_prompt:
        console.say(first_prompt)
    typed: list[str] = []
    need = 0
    while not need or len(typed) < need:
        line = console.ask(f"share {len(typed) + 1}: ", secret=True)
        if line is None or not line.strip():
            break
        typed.append(normalize_share(line))
        if not need:
            need = shares_needed(check_share(typed[0], 1))
    return typed
