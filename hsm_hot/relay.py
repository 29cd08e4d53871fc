"""The hot HSM's side of the serial link: commands to the cold HSM, link errors translated.

This is the one place where `cc_common.link` errors become the hot HSM's own: a timeout or a
dead line is `ColdUnreachable` (the cold HSM may or may not have acted; the link's request ids
make a re-send within one call safe), a refusal by a cold handler is `ColdRefused` carrying the
cold code and message unchanged, and a MAC refusal means the two sides are not paired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from cc_common.hops import timed, within_caller
from cc_common.link import (
    LinkAuthError,
    LinkError,
    LinkRemoteError,
    LinkTimeout,
)
from hsm_hot.errors import ColdRefused, ColdUnreachable, NotPaired

log = logging.getLogger(__name__)


class LinkCaller(Protocol):
    def call(self, command: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class ColdRelay:
    """Runs link commands on the cold HSM with the configured timeout."""

    def __init__(self, client: LinkCaller, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.round_trips = 0  # commands the cold HSM answered (refusals included)
        self.last_error = ""  # the newest link failure, with its time, for the console

    def _failed(self, text: str) -> None:
        self.last_error = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"

    def call(
        self, command: str, payload: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        start = time.monotonic()
        limit = within_caller(timeout or self.timeout)
        try:
            with timed(log, "hot->cold", command, limit, answers=(LinkRemoteError,)):
                answer = self.client.call(command, payload, limit)
        except LinkRemoteError as exc:
            self.round_trips += 1
            log.info("cold HSM refused %s: [%d] %s", command, exc.code, exc.message)
            raise ColdRefused(exc.message, code=exc.code) from None
        except LinkAuthError as exc:
            self._failed(f"{command}: link authentication refused")
            log.error("cold HSM refused our link authentication for %s", command)
            raise NotPaired(f"cold HSM refused the link authentication: {exc.message}") from None
        except LinkTimeout as exc:
            self._failed(f"{command}: no answer ({exc.message})")
            log.warning("cold HSM did not answer %s: %s", command, exc.message)
            raise ColdUnreachable(f"cold HSM unreachable: {exc.message}") from None
        except LinkError as exc:
            self._failed(f"{command}: {exc.message}")
            log.warning("link failure on %s: %s", command, exc.message)
            raise ColdUnreachable(f"cold HSM unreachable: {exc.message}") from None
        self.round_trips += 1
        log.debug("%s answered in %.3fs", command, time.monotonic() - start)
        if not isinstance(answer, dict):
            raise ColdUnreachable(f"cold HSM gave a malformed answer to {command}")
        return answer

    def stats(self) -> dict[str, int]:
        return {**self.client.stats(), "round trips": self.round_trips}

    def close(self) -> None:
        self.client.close()
