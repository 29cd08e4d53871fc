"""A phone that is only a number and an inbox (the operator, a merchant's owner, a gateway
number receiving replies). Tests and the demo read the inbox through the control channel."""

from __future__ import annotations

import logging
import threading
from typing import Any

from firmware_sim.gsm.sms import Message, Reassembler, Segment

log = logging.getLogger(__name__)


class Phone:
    """An endpoint of the carrier that keeps every whole message it receives."""

    def __init__(self, number: str, network: str) -> None:
        self.number = number
        self.network = network
        self._reassembler = Reassembler()
        self._inbox: list[Message] = []
        self._lock = threading.Lock()

    def receive(self, seg: Segment) -> None:
        msg = self._reassembler.add(seg)
        if msg is None:
            return
        with self._lock:
            self._inbox.append(msg)
        log.info("phone %s received %s from %s", self.number, msg.message_id, msg.sender)

    def inbox(self, *, clear: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            messages = list(self._inbox)
            if clear:
                self._inbox.clear()
        return [message_dict(m) for m in messages]

    def count(self) -> int:
        with self._lock:
            return len(self._inbox)


def message_dict(m: Message) -> dict[str, Any]:
    return {
        "id": m.message_id,
        "from": m.sender,
        "to": m.recipient,
        "text": m.text,
        "sent_at": m.sent_at.isoformat(timespec="seconds"),
        "segments": m.segments,
    }
