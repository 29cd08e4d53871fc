"""The watcher's catch-up progress: how far behind the node it is and how fast it closes in.

The worker writes it to `run/chain-progress.json` after every step so that `custody status`
(another process) can show it without a database or node connection, and logs it while the
watcher is behind, so a long catch-up or rescan is visibly progress and not a hang.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROGRESS_FILE = "chain-progress.json"
LOG_EVERY = 10.0  # seconds between progress lines while behind


@dataclass(frozen=True)
class ChainProgress:
    """One snapshot: the node's tip, the last block the watcher processed, the rate."""

    node_tip: int
    height: int | None
    blocks_per_s: float
    updated_at: float
    rescan_next: int | None = None
    rescan_end: int | None = None

    @property
    def behind(self) -> int:
        return self.node_tip - self.height if self.height is not None else self.node_tip

    @property
    def rescan_left(self) -> int:
        if self.rescan_next is None or self.rescan_end is None:
            return 0
        return max(self.rescan_end - self.rescan_next + 1, 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "behind": self.behind, "rescan_left": self.rescan_left}

    def describe(self) -> str:
        where = f"watcher at block {self.height}" if self.height is not None else "watcher"
        text = f"chain: node tip {self.node_tip}, {where}, {self.behind} behind"
        if self.behind > 0 or self.rescan_left:
            text += f", {self.blocks_per_s:.1f} blocks/s"
        if self.rescan_left:
            text += f"; rescan at {self.rescan_next}, {self.rescan_left} blocks left"
        return text


def progress_path(run_dir: Path) -> Path:
    return run_dir / PROGRESS_FILE


def write_progress(run_dir: Path, progress: ChainProgress) -> None:
    """Atomic write, so a reader never sees half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = progress_path(run_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(progress)))
    os.replace(tmp, path)


def read_progress(run_dir: Path) -> ChainProgress | None:
    try:
        raw = json.loads(progress_path(run_dir).read_text())
        return ChainProgress(**raw)
    except (OSError, ValueError, TypeError):
        return None


class ProgressTracker:
    """Turns successive (tip, height) observations into a rate, a file and log lines."""

    def __init__(self, run_dir: Path, clock: Any = time.monotonic) -> None:
        self.run_dir = run_dir
        self.clock = clock
        self._last: tuple[float, int] | None = None  # (when, blocks processed so far)
        self._rate = 0.0
        self._logged = 0.0
        self._done = 0

    def update(
        self,
        node_tip: int,
        height: int | None,
        processed: int,
        rescan: tuple[int, int] | None = None,
    ) -> ChainProgress:
        """Record one step: `processed` blocks (tip-following and rescan) were handled."""
        now = self.clock()
        self._done += processed
        if self._last is not None and now > self._last[0]:
            instant = (self._done - self._last[1]) / (now - self._last[0])
            self._rate = instant if self._rate == 0.0 else 0.7 * self._rate + 0.3 * instant
        self._last = (now, self._done)
        progress = ChainProgress(
            node_tip=node_tip,
            height=height,
            blocks_per_s=round(self._rate, 2),
            updated_at=time.time(),
            rescan_next=rescan[0] if rescan else None,
            rescan_end=rescan[1] if rescan else None,
        )
        try:
            write_progress(self.run_dir, progress)
        except OSError as exc:
            log.warning("could not write the chain progress file: %s", exc)
        lagging = progress.behind > 1 or progress.rescan_left > 0
        if lagging and now - self._logged >= LOG_EVERY:
            self._logged = now
            log.info("catching up: %s", progress.describe())
        elif not lagging and self._logged:
            self._logged = 0.0
            log.info("caught up: %s", progress.describe())
        return progress
