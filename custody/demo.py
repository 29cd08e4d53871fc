"""The end-to-end demo scenario (`python -m custody.demo --dir D`), run by `scripts/demo`.

It runs against a deployment started by `custody up` and goes only through the real
interfaces: the modems' serial ports with AT commands, the node's JSON-RPC. It is a list of
steps; each prints one line saying what it proved, and a summary table ends the run. A step
whose part is not built yet is skipped with the reason; any failed step makes the exit status
non-zero. Later issues extend the scenario by appending steps to `STEPS`.
"""

from __future__ import annotations

import argparse
import enum
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args, render_table
from cc_common.config import Config
from cc_common.errors import CustodyError
from custody import supervisor as sv

AT_TIMEOUT = 10.0
SMS_TIMEOUT = 30.0
BLOCKS_TO_MINE = 3


class Outcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class StepFailed(Exception):
    """The step ran and what it checks is not true."""


class StepSkipped(Exception):
    """The part this step shows is not built or not running yet."""


@dataclass
class Context:
    """What steps share: the configuration and the status read at the start."""

    config: Config
    status: sv.Status
    facts: dict[str, Any] = field(default_factory=dict)

    def is_ready(self, name: str) -> bool:
        return any(r.name == name and r.ready for r in self.status.rows)


@dataclass(frozen=True)
class Step:
    """One demo step: `run` returns a sentence saying what it proved, or raises."""

    name: str
    run: Callable[[Context], str]


# --------------------------------------------------------------------------- AT over serial


class AtPort:
    """A minimal AT command client over a serial port (what a modem driver does)."""

    FINAL = re.compile(rb"\r\n(OK|ERROR|\+CMS ERROR: *\d+|\+CME ERROR: *\d+)\r\n")

    def __init__(self, path: Path, name: str, baud: int = 115200) -> None:
        import serial  # noqa: PLC0415 (only the SMS step needs pyserial)

        self.name = name
        self.port = serial.Serial(str(path), baud, timeout=0.05)
        self.buf = bytearray()

    def close(self) -> None:
        self.port.close()

    def _fill(self) -> None:
        self.buf += self.port.read(max(1, self.port.in_waiting))

    def expect(
        self, pattern: re.Pattern[bytes], timeout: float, what: str
    ) -> tuple[re.Match[bytes], bytes]:
        """Read until `pattern` matches; consume the buffer up to the end of the match and
        return the match and the bytes that came before it."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(bytes(self.buf))
            if match:
                before = bytes(self.buf[: match.start()])
                del self.buf[: match.end()]
                return match, before
            if time.monotonic() >= deadline:
                raise StepFailed(
                    f"{self.name}: no {what} within {timeout:.0f}s (got {bytes(self.buf)!r})"
                )
            self._fill()

    def drain(self) -> None:
        self._fill()
        self.buf.clear()

    def command(self, cmd: str, timeout: float = AT_TIMEOUT) -> list[str]:
        """Send `cmd`, return its information lines; a final result other than OK fails."""
        self.port.write(cmd.encode() + b"\r")
        match, before = self.expect(self.FINAL, timeout, f"final result for {cmd}")
        final = match.group(1).decode()
        body = before.decode(errors="replace")
        lines = [ln for ln in body.split("\r\n") if ln.strip() and ln.strip() != cmd]
        if final != "OK":
            raise StepFailed(f"{self.name}: {cmd} answered {final}")
        return lines


def _modem(config: Config, name: str) -> dict[str, Any]:
    for modem in config.section("firmware_sim").list("modems"):
        if modem.get("name") == name:
            return modem
    raise StepFailed(f"no modem named {name!r} in [[firmware_sim.modems]]")


def step_status(ctx: Context) -> str:
    print(sv.render_status(ctx.status))
    if ctx.status.supervisor_pid is None:
        raise StepFailed("no supervisor runs; start it with `custody up`")
    if not ctx.status.all_ready:
        raise StepFailed("not every process is ready")
    names = ", ".join(r.name for r in ctx.status.rows)
    return f"`custody up` runs {len(ctx.status.rows)} process(es), all ready: {names}"


def step_sms(ctx: Context) -> str:
    if not ctx.is_ready("firmware-sim"):
        raise StepFailed("firmware-sim is not running, so there are no modems")
    sender_cfg, receiver_cfg = _modem(ctx.config, "cold-a"), _modem(ctx.config, "vdevice")
    data_dir = ctx.config.data_dir
    text = f"ChainCloud demo {secrets.token_hex(4)}: hello from the cold HSM modem"
    sender = AtPort(data_dir / sender_cfg["link"], "cold-a")
    receiver = AtPort(data_dir / receiver_cfg["link"], "vdevice")
    try:
        for port in (sender, receiver):
            port.drain()
            port.command("AT")
            port.command("ATE0")
            port.command("AT+CMGF=1")
        sender.port.write(f'AT+CMGS="{receiver_cfg["number"]}"\r'.encode())
        sender.expect(re.compile(rb"> "), AT_TIMEOUT, "`> ` prompt after AT+CMGS")
        sender.port.write(text.encode() + b"\x1a")
        sender.expect(re.compile(rb"\+CMGS: *(\d+)"), SMS_TIMEOUT, "+CMGS reference")
        sender.expect(AtPort.FINAL, AT_TIMEOUT, "OK after +CMGS")
        cmti, _ = receiver.expect(re.compile(rb'\+CMTI: *"SM",(\d+)'), SMS_TIMEOUT, "+CMTI")
        index = int(cmti.group(1))
        lines = receiver.command(f"AT+CMGR={index}")
    finally:
        sender.close()
        receiver.close()
    if len(lines) < 2 or not lines[0].startswith("+CMGR:"):
        raise StepFailed(f"unexpected AT+CMGR answer: {lines!r}")
    if sender_cfg["number"] not in lines[0]:
        raise StepFailed(f"sender {sender_cfg['number']} not in {lines[0]!r}")
    if lines[1] != text:
        raise StepFailed(f"text changed on the way: sent {text!r}, read {lines[1]!r}")
    return (
        f"modem cold-a ({sender_cfg['number']}) sent an SMS with AT+CMGS; modem vdevice "
        f"({receiver_cfg['number']}) got +CMTI and read it intact with AT+CMGR={index}"
    )


def _rpc(config: Config, method: str, *params: Any) -> Any:
    import requests  # noqa: PLC0415

    node = config.section("node")
    response = requests.post(
        node.str("rpc_url"),
        json={"jsonrpc": "1.0", "id": "demo", "method": method, "params": list(params)},
        auth=(node.str("rpc_user"), node.secret("rpc_password")),
        timeout=node.float("timeout", 30.0),
    )
    body = response.json()
    if body.get("error"):
        raise StepFailed(f"{method}: {body['error']}")
    return body["result"]


def step_node(ctx: Context) -> str:
    if not ctx.is_ready("node"):
        raise StepSkipped("the regtest node is not running (not built yet)")
    from embit.networks import NETWORKS  # noqa: PLC0415
    from embit.script import Script  # noqa: PLC0415

    # A P2WPKH address of a random hash: nobody holds its key, the coins stay unspendable.
    address = Script(b"\x00\x14" + secrets.token_bytes(20)).address(NETWORKS["regtest"])
    before = int(_rpc(ctx.config, "getblockcount"))
    hashes = _rpc(ctx.config, "generatetoaddress", BLOCKS_TO_MINE, address)
    after = int(_rpc(ctx.config, "getblockcount"))
    if len(hashes) != BLOCKS_TO_MINE or after != before + BLOCKS_TO_MINE:
        raise StepFailed(f"mined {len(hashes)} blocks, height went {before} -> {after}")
    return f"mined {BLOCKS_TO_MINE} regtest blocks over JSON-RPC (height {before} -> {after})"


STEPS: tuple[Step, ...] = (
    Step("status", step_status),
    Step("sms", step_sms),
    Step("node", step_node),
)


def run_steps(config: Config, steps: Sequence[Step] = STEPS) -> list[tuple[str, Outcome, str]]:
    ctx = Context(config=config, status=sv.read_status(config))
    results = []
    for step in steps:
        started = time.monotonic()
        try:
            detail = step.run(ctx)
            outcome = Outcome.PASSED
        except StepSkipped as exc:
            outcome, detail = Outcome.SKIPPED, str(exc)
        except (StepFailed, CustodyError, OSError, ValueError) as exc:
            outcome, detail = Outcome.FAILED, str(exc) or type(exc).__name__
        elapsed = time.monotonic() - started
        print(f"[{outcome:7}] {step.name}: {detail} ({elapsed:.1f}s)", flush=True)
        results.append((step.name, outcome, detail))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custody.demo", description=__doc__)
    add_dir_argument(parser)
    parser.add_argument("--step", action="append", help="run only these steps (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except CustodyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    steps = [s for s in STEPS if not args.step or s.name in args.step]
    results = run_steps(config, steps)
    print()
    rows = [(n, o, d if len(d) <= 72 else d[:71] + "…") for n, o, d in results]
    print(render_table(("STEP", "RESULT", "DETAIL"), rows))
    failed = [name for name, outcome, _ in results if outcome == Outcome.FAILED]
    passed = sum(1 for _, outcome, _ in results if outcome == Outcome.PASSED)
    print(f"\n{passed} passed, {len(failed)} failed, {len(results) - passed - len(failed)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
