"""Per-process logging: the process name on every line, to stderr and to a file.

One format per process: text for people (the default), or `[logging] format = "json"`: one
JSON object per line (`time`, `level`, `process`, `logger`, `message`, and `exc_info` when
there is one) for log shippers. Never pass a PIN, key, token or password to a logger; wire dumps
go to `TRACE` (below DEBUG). Log files are created 0600.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from cc_common.text import SafeTextFilter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

FORMAT = "%(asctime)s %(levelname)-5s {process} %(name)s: %(message)s"


def _formatter(process: str, fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    return logging.Formatter(FORMAT.format(process=process), datefmt="%H:%M:%S")


def setup_logging(
    process: str, log_dir: Path | None, level: int | str = logging.INFO, *, fmt: str = "text"
) -> None:
    """Configure the root logger of a process named `process` (e.g. `hsm-hot`)."""
    formatter = _formatter(process, fmt)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    stream.addFilter(SafeTextFilter())  # no control or bidi character reaches a log line
    root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{process}.log"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # never 0644
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.addFilter(SafeTextFilter())
        root.addHandler(file_handler)
