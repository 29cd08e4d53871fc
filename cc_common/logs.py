"""Per-process logging: the process name on every line, to stderr and to a file.

Never pass a PIN, key, token or password to a logger; wire dumps go to `TRACE` (below DEBUG).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cc_common.text import SafeTextFilter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

FORMAT = "%(asctime)s %(levelname)-5s {process} %(name)s: %(message)s"


def setup_logging(process: str, log_dir: Path | None, level: int | str = logging.INFO) -> None:
    """Configure the root logger of a process named `process` (e.g. `hsm-hot`)."""
    fmt = logging.Formatter(FORMAT.format(process=process), datefmt="%H:%M:%S")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    stream.addFilter(SafeTextFilter())  # no control or bidi character reaches a log line
    root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / f"{process}.log", encoding="utf-8")
        file_handler.setFormatter(fmt)
        file_handler.addFilter(SafeTextFilter())
        root.addHandler(file_handler)
