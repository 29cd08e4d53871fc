"""Pseudo-terminals that stand in for serial ports, reachable at stable paths.

The slave side of a pty is a real tty device (`/dev/pts/N`) that pyserial opens like any
serial port; a symlink at a configured path (`<data>/dev/serial-hot`) hides the changing
number. We keep our own descriptor on the slave open so that the master never sees a hang-up
while no client has the port open (a real UART does not notice a cable being unplugged).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pty
import tty
from pathlib import Path

from firmware_sim.errors import StartupError

log = logging.getLogger(__name__)


def _place_link(link: Path, target: str) -> None:
    """Point `link` at `target`, replacing a stale symlink but never a real file."""
    if link.is_symlink():
        old = os.readlink(link)
        if Path(old).exists() and old.startswith("/dev/pts/"):
            log.warning("replacing link %s -> %s left by an earlier run", link, old)
    elif link.exists():
        raise StartupError(f"{link} exists and is not a symlink; refusing to replace it")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class PtyPort:
    """One pseudo-terminal: the master is ours, the slave is the port at `link`."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master_fd = -1
        self._slave_fd = -1
        self.device = ""

    def open(self) -> PtyPort:
        master, slave = pty.openpty()
        try:
            tty.setraw(master)
            tty.setraw(slave)
            flags = fcntl.fcntl(master, fcntl.F_GETFL)
            fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self.device = os.ttyname(slave)
            _place_link(self.link, self.device)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self.master_fd, self._slave_fd = master, slave
        log.info("port %s -> %s", self.link, self.device)
        return self

    def close(self) -> None:
        """Remove the link (if still ours) and close both sides."""
        with contextlib.suppress(OSError):
            if self.link.is_symlink() and os.readlink(self.link) == self.device:
                self.link.unlink()
        for fd in (self.master_fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self._slave_fd = -1

    def write(self, data: bytes) -> int:
        """Write to the port without blocking; what the tty cannot take is lost (overrun)."""
        try:
            return os.write(self.master_fd, data)
        except BlockingIOError:
            return 0

    def read(self, size: int = 4096) -> bytes:
        """Bytes the client wrote, or b'' if none are waiting."""
        try:
            return os.read(self.master_fd, size)
        except (BlockingIOError, InterruptedError):
            return b""
