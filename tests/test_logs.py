"""Process logging: each record is escaped and formatted once, and both handlers (stderr and
the file) write that same line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_common import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


class _Counting(logging.Formatter):
    calls = 0

    def format(self, record: logging.LogRecord) -> str:
        _Counting.calls += 1
        return super().format(record)


def test_both_handlers_write_one_escaped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root: None
) -> None:
    logs.setup_logging("proc", tmp_path)
    log = logging.getLogger("t")
    log.info("forged\nline %s", "a\u202eb")
    log.info("second %d", 2)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    err = capsys.readouterr().err
    written = (tmp_path / "proc.log").read_text()
    assert err == written
    lines = written.splitlines()
    assert lines[0].endswith("proc t: forged\\x0aline a\\u202eb")
    assert lines[1].endswith("proc t: second 2")
    assert "failed" in lines[2] and "ValueError: boom" in written


def test_a_record_is_formatted_once_for_two_handlers() -> None:
    once = logs._FormatOnce(_Counting("%(message)s"))
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m %d", (1,), None)
    other = logging.LogRecord("t", logging.INFO, __file__, 1, "n %d", (2,), None)
    assert once.format(record) == once.format(record) == "m 1"
    assert _Counting.calls == 1
    assert once.format(other) == "n 2" and once.format(record) == "m 1"  # another in between
    assert _Counting.calls == 3
