"""What `/proc` and process groups say: who is alive, who belongs to a data directory.

Used to stop a whole process group at once, to find helpers that left their group (they still
carry the supervisor's marker in their environment) and to report strays in `custody status`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from custody.supervisor.common import SUPERVISOR_ENV


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _ancestors(pid: int) -> set[int]:
    """`pid` and its ancestors (so a scan never reports the shell or pytest that asked)."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def processes_referencing(text: str, exclude: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Live processes whose command line or environment contains `text` (e.g. a data dir).

    Every supervised child gets `CC_DATA_DIR` in its environment, and so do its own children,
    so this finds strays even when they changed their command line.
    """
    skip = _ancestors(os.getpid()) | set(exclude)
    needle = text.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append((int(entry.name), shown or "(no command line)"))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def orphans_of(data_dir: Path, supervisor_pid: int) -> list[int]:
    """Processes a previous supervisor of `data_dir` started (it died without stopping them)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        owner = env.get(SUPERVISOR_ENV)
        if env.get("CC_DATA_DIR") == str(data_dir) and owner and owner != str(supervisor_pid):
            found.append(int(entry.name))
    return found


def processes_with_env(key: str, value: str) -> list[tuple[int, str]]:
    """Live processes whose environment has `key=value` (descendants of one supervisor)."""
    entry_bytes = f"{key}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if entry_bytes in environ.split(b"\0"):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append((int(entry.name), shown or "(no command line)"))
    return found


def remove_dangling_links(directory: Path) -> list[Path]:
    """Remove symlinks whose target is gone (pty links of a killed simulator)."""
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_symlink() and not path.exists():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
