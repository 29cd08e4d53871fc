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


class _FormatOnce(logging.Formatter):
    """`inner`'s line for a record, made once for the two handlers (stderr and the file) that
    both write it: formatting was paid twice per line (~7% of the cold HSM's CPU per co-sign).
    The last record and its line are one tuple, swapped whole, so a thread that logs in
    between makes the other format again, never take its line. A record with a traceback is
    not kept (its frames' locals would live on until the next line)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner
        self._last: tuple[logging.LogRecord | None, str] = (None, "")

    def format(self, record: logging.LogRecord) -> str:
        last_record, line = self._last
        if last_record is not record:
            line = self._inner.format(record)
            self._last = (None, "") if record.exc_info else (record, line)
        return line


class _SafeTextOnce(SafeTextFilter):
    """`SafeTextFilter` shared by both handlers: the record both pass is escaped once (the
    escaping is idempotent, so a record seen again after another thread's is merely redone)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record is not self._last:
            super().filter(record)
            self._last = None if record.exc_info else record
        return True


def setup_logging(
    process: str, log_dir: Path | None, level: int | str = logging.INFO, *, fmt: str = "text"
) -> None:
    """Configure the root logger of a process named `process` (e.g. `hsm-hot`)."""
    formatter = _FormatOnce(_formatter(process, fmt))
    safe = _SafeTextOnce()  # no control or bidi character reaches a log line
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    stream.addFilter(safe)
    root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{process}.log"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # never 0644
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.addFilter(safe)
        root.addHandler(file_handler)
