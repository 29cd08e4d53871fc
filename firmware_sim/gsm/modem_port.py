"""A GSM modem as the host sees it: AT firmware behind a serial port, with a SIM on a network.

Glue only: bytes from the pty go to the firmware (`AtModem`), its answers go back to the pty;
segments from the carrier are reassembled and stored, which makes the firmware announce them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from pathlib import Path
from typing import Any

from firmware_sim.gsm.at_modem import AtModem
from firmware_sim.gsm.carrier import Carrier, NetworkState
from firmware_sim.gsm.sms import Reassembler, Segment
from firmware_sim.pty_pair import PtyPort

log = logging.getLogger(__name__)


class ModemPort:
    """One modem: its port at `link`, its number on `network` of `carrier`."""

    def __init__(
        self,
        name: str,
        number: str,
        network: str,
        link: Path,
        carrier: Carrier,
        *,
        capacity: int = 50,
    ) -> None:
        self.name = name
        self.number = number
        self.network = network
        self.port = PtyPort(link)
        self._carrier = carrier
        self._reassembler = Reassembler()
        self.firmware = AtModem(
            number,
            write=self._write,
            submit=self._submit,
            registered=self._registered,
            capacity=capacity,
        )
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.overrun = 0

    # ----- wiring ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.port.master_fd < 0:
            return
        written = self.port.write(data)
        self.overrun += len(data) - written

    def _submit(self, recipient: str, text: str) -> None:
        self._carrier.submit(self.number, recipient, text)

    def _registered(self) -> bool:
        return self._carrier.network_state(self.network) is not NetworkState.DOWN

    def receive(self, seg: Segment) -> None:
        """Carrier side: one segment for this SIM."""
        msg = self._reassembler.add(seg)
        if msg is not None:
            index = self.firmware.store(msg)
            log.info(
                "modem %s stored %s from %s at index %d",
                self.name,
                msg.message_id,
                msg.sender,
                index,
            )

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.port.open()
        self._thread = threading.Thread(target=self._run, name=f"modem-{self.name}", daemon=True)
        self._thread.start()
        log.info("modem %s (%s on %s) at %s", self.name, self.number, self.network, self.port.link)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.port.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop:
            try:
                ready, _, _ = select.select([self.port.master_fd, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self.port.master_fd in ready:
                data = self.port.read()
                if data:
                    self.firmware.feed(data)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "number": self.number,
            "carrier": self.network,
            "link": str(self.port.link),
            "device": self.port.device,
            "stored": self.firmware.stored_count(),
            "partial": self._reassembler.pending(),
            "overrun": self.overrun,
            "counters": dict(self.firmware.counters),
        }
