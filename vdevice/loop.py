"""The V-device's loop (reference section 5), one pass every `[vdevice] poll_interval`.

Each pass: read the SMS inbox (owner commands, channel replies), keep the channel, and, while
the loop runs, verify a batch and move a send along. Nothing blocks for long: waits for SMS
replies are deadlines in the state, so an owner's `CC:STOP_LOOP` is answered within a pass.
An exception in one step is logged, alerted once, and the next pass goes on.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from cc_common.process import clear_ready, mark_ready
from cc_common.sms.errors import SmsError
from cc_common.sms.modem import GsmModem
from cc_common.spending_policy import ACK_PREFIX, AckState
from vdevice import policy_changes
from vdevice.batches import BatchVerifier
from vdevice.channel import ChannelKeeper
from vdevice.errors import NotInitialised, NotProvisioned, RemoteError
from vdevice.owner import Dispatcher, OwnerControl
from vdevice.owner_auth import LOCKOUT, MAX_FAILURES, OwnerAuth
from vdevice.phone import Phone
from vdevice.remote import CustodyClient, SiteClient
from vdevice.sends import SendProcessor
from vdevice.settings import Settings
from vdevice.state import LoopState, State
from vdevice.status import snapshot, write_status

log = logging.getLogger(__name__)

SIGNED_PREFIX = "CC:SEND_SIGNED:"

MODEM_OPEN_TIMEOUT = 30.0


class VDevice:
    """Everything the loop needs, wired once the phone is provisioned."""

    def __init__(self, state: State, modem: GsmModem, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        prov = state.provisioning()
        state.identity_pub()
        self.phone = Phone(modem, state, prov.owner_number)
        self.site = SiteClient(
            settings.merchant_url, settings.merchant_token, settings.http_timeout
        )
        self.custody = CustodyClient(prov.custody_url, prov.hot_token, settings.http_timeout)
        self.channels = ChannelKeeper(state, self.phone, prov, settings)
        self.batches = BatchVerifier(
            state, self.phone, self.channels, self.site, self.custody, prov, settings
        )
        self.sends = SendProcessor(
            state, self.phone, self.channels, self.site, self.custody, settings
        )
        auth = OwnerAuth(state, self._locked_out)
        self.owner = OwnerControl(state, self.phone, auth, self.sends.policy)
        self.dispatcher = Dispatcher(
            self.phone,
            self.owner,
            prov.cold_numbers,
            self.channels.on_open_reply,
            self.batches.on_proof,
            self._cold_word,
        )

    def _cold_word(self, text: str) -> bool:
        """The cold HSM's signed answers outside the channel protocol; True if it was one."""
        now = time.time()
        if text.startswith(ACK_PREFIX):
            prov = self.state.provisioning()
            ack = policy_changes.on_ack(self.state, prov.cold_identity, prov.account_id, text, now)
            if ack is not None and ack.state is AckState.REFUSED:
                self.phone.alert(
                    f"policy change {ack.seq} refused by the cold HSM (code {ack.detail})"
                )
            return True
        if text.startswith(SIGNED_PREFIX):
            self.sends.on_replaced(text, now)
            return True
        return False

    def _send_policy_change(self) -> None:
        cold = self.state.provisioning().cold_numbers[0]
        policy_changes.tick(
            self.state,
            lambda text: self.phone.send(cold, text),
            self.settings.sms_reply_timeout,
            time.time(),
        )

    def _locked_out(self, number: str) -> None:
        self.phone.alert(
            f"owner commands from {number} ignored for {int(LOCKOUT // 60)} min after"
            f" {MAX_FAILURES} refused codes"
        )

    def close(self) -> None:
        self.site.close()
        self.custody.close()

    def _step(self, name: str, fn: Callable[[], object]) -> None:
        """Run one step; a failure is logged (and alerted once) and never ends the loop."""
        key = f"step-{name}"
        try:
            fn()
        except RemoteError as exc:
            # The site or custody is down: the loop retries each pass; alert only if it lasts.
            log.warning("%s: %s", name, exc.message)
            return
        except Exception as exc:  # the loop must survive any one step
            log.exception("%s failed", name)
            self.phone.alert_once(key, f"V-device error in {name}: {type(exc).__name__}")
            return
        self.phone.clear(key)

    def one_pass(self, wait: float) -> None:
        for sms in self.phone.receive(wait):
            self._step("sms", functools.partial(self.dispatcher.dispatch, sms))
        self._step("channel", self.channels.tick)
        self._step("policy", self._send_policy_change)
        loop, _ = self.state.loop_state()
        if loop is LoopState.RUNNING:
            self._step("batches", self.batches.tick)
            self._step("sends", self.sends.tick)

    def write_status(self) -> None:
        try:
            data = snapshot(self.state, self.settings.policies, process_running=True)
            write_status(self.settings.status_path, data)
        except (OSError, ValueError) as exc:
            log.warning("status file not written: %s", exc)


def open_modem(settings: Settings, stop: threading.Event) -> GsmModem | None:
    """Open the phone's modem, retrying for a while (the simulator may still be starting)."""
    deadline = time.monotonic() + MODEM_OPEN_TIMEOUT
    while True:
        try:
            return GsmModem(
                settings.modem_port,
                own_number=settings.number,
                name="vdevice",
                poll_interval=min(settings.poll_interval, 2.0),
            )
        except SmsError as exc:
            if time.monotonic() >= deadline or stop.is_set():
                raise
            log.info("modem not ready (%s); retrying", exc.message)
            stop.wait(0.5)
        if stop.is_set():
            return None


def wait_provisioned(state: State, settings: Settings, stop: threading.Event) -> bool:
    """Block until `vdevice init` and `vdevice provision` have been run (or stop)."""
    told = False
    while not stop.is_set():
        try:
            state.identity_pub()
            state.provisioning()
            return True
        except (NotInitialised, NotProvisioned) as exc:
            if not told:
                log.info("waiting: %s", exc.message)
                told = True
        stop.wait(settings.poll_interval)
    return False


def run(state: State, settings: Settings, stop: threading.Event) -> int:
    """The process: open the modem, announce readiness, loop until `stop`."""
    modem = open_modem(settings, stop)
    if modem is None:
        return 0
    try:
        ready_info = {"number": settings.number}
        if settings.wait_for_provisioning:
            mark_ready(settings.run_dir, "vdevice", **ready_info, provisioned=False)
            if not wait_provisioned(state, settings, stop):
                return 0
        device = VDevice(state, modem, settings)
        try:
            device.sends.resume()
            mark_ready(settings.run_dir, "vdevice", **ready_info, provisioned=True)
            log.info("V-device running (poll every %.1fs)", settings.poll_interval)
            while not stop.is_set():
                device.one_pass(settings.poll_interval)
                device.write_status()
        finally:
            device.close()
    finally:
        modem.close()
        clear_ready(settings.run_dir, "vdevice")
        try:
            write_status(
                settings.status_path,
                snapshot(state, settings.policies, process_running=False),
            )
        except Exception:  # best effort on the way out
            log.debug("final status not written", exc_info=True)
    log.info("V-device stopped")
    return 0
