"""Shared helpers for the HSM pair's tests: hot-wallet PSBTs, V-device signatures, processes.

Building blocks, usable by the hot and the cold engineers' tests alike:

- `build_send_psbt(wallet, coins, payments, change=...)`: a hot send PSBT as custody builds it
  with wallet_core (witness UTXOs, witness scripts, every cosigner's derivation, change origins);
- `VDevice`: a V-device identity key and channel key, signing channel registrations and
  `vc_code` over `send_request_string` (the signed-message format);
- `HsmPair`: one deployment running `firmware-sim serve`, `hsm-cold init` + `serve` and
  `hsm-hot init` + `serve` as separate OS processes, with custody's own `HotHsmClient` on the
  hot RPC. The PKCS#11 module is never loaded in the pytest process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
import requests
from pkcs11 import Attribute, KeyType, ObjectClass

from cc_common.config import load_config
from cc_common.fingerprint import fingerprint
from cc_common.link import LinkClient, LinkConfig, MemoryCounterStore
from cc_common.pairing import take_pairing_file
from cc_common.token import HsmToken, KeyProtected
from custody.hsm_client import HotHsmClient, ProvisionedAccount
from examples.merchant_site.custody_client import DEFAULT_TIMEOUT as SITE_DEADLINE
from firmware_sim.control import ControlClient
from firmware_sim.serial_relay import SerialLine
from tests.harness import Deployment, TestProcess, wait_until
from wallet_core import messages
from wallet_core.addresses import address_to_script, p2wpkh_address
from wallet_core.bip32 import ExtendedKey, parse_xpub
from wallet_core.chaincloud import format_outs, send_request_string
from wallet_core.descriptors import wpkh_descriptor
from wallet_core.networks import Network
from wallet_core.prevtx import parse_prev_tx
from wallet_core.psbt import DEFAULT_SEQUENCE, Psbt, PsbtInput, PsbtOutput
from wallet_core.wallets import (
    CHANGE,
    AccountKey,
    FixedKey,
    HotWallet,
    bip48_account_path,
    bip84_account_path,
)

NETWORK = Network.REGTEST
PHONES = {"vdevice_phone": "+15550000100", "owner_phone": "+15550000200"}


# -- wallets and PSBTs -----------------------------------------------------------------------


def hot_wallet(p: ProvisionedAccount, network: Network = NETWORK) -> HotWallet:
    """The account's hot wallet from the public material `provision_account` returned."""
    path = bip48_account_path(network, 0)
    return HotWallet(
        (
            FixedKey(bytes.fromhex(p.hot_pubkey)),
            AccountKey(parse_xpub(p.cosigner_xpub), bytes.fromhex(p.cosigner_fingerprint), path),
            AccountKey(parse_xpub(p.recovery_xpub), bytes.fromhex(p.recovery_fingerprint), path),
        ),
        network,
    )


@dataclass(frozen=True)
class Coin:
    """A hot-wallet UTXO: outpoint, value, its wallet position and (if known) the funding tx."""

    txid: str
    vout: int
    value: int
    chain: int
    index: int
    prev_tx: bytes | None = None


def funding_tx(
    script_pubkey: bytes,
    value: int,
    vout: int,
    tag: str,
    *,
    witness: bool = False,
    filler: int = 0,
) -> bytes:
    """A transaction (never broadcast) paying `value` to `script_pubkey` at output `vout`:
    what the cold HSM hash-checks an input's amount against, for tests without a node.
    `witness` gives it a P2WPKH-sized witness (segwit serialization), as a real one has;
    `filler` adds that many other 34-byte-script outputs after ours (a batch payout)."""
    spent = hashlib.sha256(tag.encode()).digest()
    outs = [(1000 + n, bytes([0x51])) for n in range(vout)] + [(value, script_pubkey)]
    outs += [(2000 + n, bytes([0x00, 0x20]) + bytes(32)) for n in range(filler)]
    body = b"\x01" + spent + b"\x00\x00\x00\x00\x00" + b"\xff" * 4 + _varint(len(outs))
    for v, script in outs:
        body += v.to_bytes(8, "little") + bytes([len(script)]) + script
    version = (2).to_bytes(4, "little")
    if not witness:
        return version + body + b"\x00" * 4
    items = b"\x02" + b"\x48" + bytes(72) + b"\x21" + bytes(33)
    return version + b"\x00\x01" + body + items + b"\x00" * 4


def _varint(n: int) -> bytes:
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little")


def funded_coin(
    wallet: Any,
    value: int,
    chain: int,
    index: int,
    vout: int,
    tag: str,
    *,
    witness: bool = False,
    filler: int = 0,
) -> Coin:
    """A coin of `wallet` at (chain, index) with its funding transaction."""
    script = wallet.script_pubkey(index, chain)
    raw = funding_tx(script, value, vout, tag, witness=witness, filler=filler)
    return Coin(parse_prev_tx(raw).txid, vout, value, chain, index, raw)


def psbt_input(
    wallet: HotWallet, coin: Coin, *, prev_tx: bool = True, sequence: int = DEFAULT_SEQUENCE
) -> PsbtInput:
    """`coin` as a PSBT input of `wallet` (its scripts and key origins), with its funding
    transaction unless `prev_tx` is false."""
    return PsbtInput(
        txid=coin.txid,
        vout=coin.vout,
        value=coin.value,
        script_pubkey=wallet.script_pubkey(coin.index, coin.chain),
        witness_script=wallet.witness_script(coin.index, coin.chain),
        origins=wallet.origins(coin.index, coin.chain),
        sequence=sequence,
        prev_tx=coin.prev_tx if prev_tx else None,
    )


def build_send_psbt(
    wallet: HotWallet,
    coins: Sequence[Coin],
    payments: Sequence[tuple[str, int]],
    *,
    change: tuple[int, int] | None = None,
    extra_outputs: Sequence[tuple[bytes, int]] = (),
    with_prev_txs: bool = True,
) -> Psbt:
    """A hot send: `payments` (address, sat) in order, then change (index, sat) if any.

    `extra_outputs` (script, sat) are appended after the change, without origins, to build
    requests the cold HSM must refuse.
    """
    inputs = [psbt_input(wallet, c, prev_tx=with_prev_txs) for c in coins]
    outputs = [PsbtOutput(address_to_script(a, wallet.network), v) for a, v in payments]
    if change is not None:
        index, value = change
        outputs.append(
            PsbtOutput(
                wallet.script_pubkey(index, CHANGE),
                value,
                wallet.origins(index, CHANGE),
                wallet.witness_script(index, CHANGE),
            )
        )
    outputs += [PsbtOutput(script, value) for script, value in extra_outputs]
    return Psbt.create(inputs, outputs)


def send_request(payments: Sequence[tuple[str, int]], user_tx_no: str) -> dict[str, Any]:
    return {
        "coin_code": "BTC",
        "is_dynamic_fee": 1,
        "outs": format_outs(list(payments)),
        "user_tx_no": user_tx_no,
    }


# -- the V-device --------------------------------------------------------------------------------


@dataclass
class VDevice:
    """A V-device's identity key (pinned at provisioning) and its current channel key."""

    seed: str = "vdevice"
    identity: coincurve.PrivateKey = field(init=False)
    channel: coincurve.PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.identity = coincurve.PrivateKey(hashlib.sha256(f"{self.seed}/id".encode()).digest())
        self.channel = coincurve.PrivateKey(hashlib.sha256(f"{self.seed}/ch".encode()).digest())

    @property
    def identity_hex(self) -> str:
        return self.identity.public_key.format(compressed=True).hex()

    @property
    def channel_hex(self) -> str:
        return self.channel.public_key.format(compressed=True).hex()

    def channel_registration(
        self, account: int, c_id: str, expires_at: int | None = None
    ) -> dict[str, Any]:
        """`register_channel` params, signed by the identity key (docs/hsm-pair.md)."""
        expires = int(time.time()) + 86_400 if expires_at is None else expires_at
        statement = f"CC:CHANNEL:{account}:{c_id}:{self.channel_hex}:{expires}"
        return {
            "account": account,
            "c_id": c_id,
            "channel_pubkey": self.channel_hex,
            "expires_at": expires,
            "identity_sig": messages.sign_message(self.identity.secret, statement),
        }

    def vc_code(self, request: dict[str, Any], key: coincurve.PrivateKey | None = None) -> str:
        text = send_request_string(
            request["outs"],
            request["user_tx_no"],
            coin_code=request["coin_code"],
            is_dynamic_fee=request["is_dynamic_fee"],
        )
        return messages.sign_message((key or self.channel).secret, text)


def settlement_descriptor(account: int, network: Network = NETWORK) -> str:
    """A customer's settlement wallet (BIP84 descriptor of a throwaway seed)."""
    root = ExtendedKey.from_seed(hashlib.sha256(f"settle/{account}".encode()).digest(), network)
    acct = AccountKey.from_root(root, bip84_account_path(network, 0))
    return str(wpkh_descriptor(acct.xpub, acct.fingerprint, acct.path, 0))


def random_address(network: Network = NETWORK) -> str:
    """A P2WPKH address of a throwaway key (a payee outside the wallet)."""

    key = coincurve.PrivateKey(os.urandom(32))
    return p2wpkh_address(key.public_key.format(compressed=True), network)


# -- the processes -------------------------------------------------------------------------------


class HsmPair:
    """firmware-sim, the cold HSM and the hot HSM running on one deployment."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.sim: TestProcess | None = None
        self.cold: TestProcess | None = None
        self.hot: TestProcess | None = None

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.d.config.section("firmware_sim").path("control_socket"))

    @property
    def hot_section(self) -> Any:
        return self.d.config.section("hsm_hot")

    def client(self, timeout: float = 60.0) -> HotHsmClient:
        """custody's own client of the hot RPC."""
        s = self.hot_section
        url = f"http://{s.str('rpc_host')}:{s.int('rpc_port')}"
        return HotHsmClient(url, s.secret("rpc_secret"), timeout=timeout)

    def init(self) -> None:
        """`hsm-cold init` then `hsm-hot init` (each a process run to completion)."""
        self.d.cli("init", "--dir", str(self.d.data_dir), module="hsm_cold.cli", timeout=120)
        self.d.cli("init", "--dir", str(self.d.data_dir), module="hsm_hot.cli", timeout=120)

    def start_sim(self) -> TestProcess:
        self.sim = self.d.start_cli("firmware-sim", "firmware_sim.cli", "serve", timeout=60)
        return self.sim

    def start_cold(self) -> TestProcess:
        self.cold = self.d.start_cli("hsm-cold", "hsm_cold.cli", "serve", timeout=60)
        return self.cold

    def start_hot(self, *, wait: bool = True) -> TestProcess:
        self.hot = self.d.start_cli("hsm-hot", "hsm_hot.cli", "serve", wait=wait, timeout=60)
        return self.hot

    def start(self) -> HsmPair:
        self.start_sim()
        self.init()
        self.start_cold()
        self.start_hot()
        wait_until(
            lambda: self.client(5.0).health()["cold_reachable"], 30.0, "the cold HSM via hot"
        )
        return self

    def serve_once(self, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`hsm-hot serve` expected to exit at once (a refused PIN, a locked token)."""
        return subprocess.run(
            [sys.executable, "-m", "hsm_hot.cli", "serve", "--dir", str(self.d.data_dir)],
            env={**self.d.env, **env},
            cwd=self.d.data_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def unlock(self, so_pin: str) -> subprocess.CompletedProcess:
        """`hsm-hot unlock` with the SO PIN on stdin, as an operator would type it."""
        return subprocess.run(
            [sys.executable, "-m", "hsm_hot.cli", "unlock", "--dir", str(self.d.data_dir)],
            env=self.d.env,
            cwd=self.d.data_dir,
            input=so_pin + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop_hot(self) -> None:
        assert self.hot is not None
        problems = self.hot.stop()
        assert not problems, problems

    def audit(self) -> list[dict[str, Any]]:
        out = self.d.cli("audit", "--dir", str(self.d.data_dir), "--json", module="hsm_hot.cli")
        return [json.loads(x) for x in out.stdout.splitlines() if x.strip()]

    def line_counter(self, name: str) -> int:
        """A firmware-sim lane counter (bytes_out, flipped_bits, ...), both directions."""
        lanes = self.control.status()["serial"]["lanes"]
        return sum(int(lane["counters"][name]) for lane in lanes.values())

    def wire_bytes(self) -> int:
        """Bytes carried by the serial line both ways so far (firmware-sim counters)."""
        lanes = self.control.status()["serial"]["lanes"]
        return sum(int(lane["counters"]["bytes_out"]) for lane in lanes.values())

    def settled_wire_bytes(self, quiet: float = 0.2, deadline: float = 10.0) -> int:
        """`wire_bytes` once the line has been quiet for `quiet` seconds: acknowledgements are
        held up to `LinkConfig.ack_delay` to ride on the next frame, and leave alone after it."""
        end = time.monotonic() + deadline
        last = self.wire_bytes()
        while time.monotonic() < end:
            time.sleep(quiet)
            now = self.wire_bytes()
            if now == last:
                return now
            last = now
        raise AssertionError(f"the serial line did not go quiet within {deadline}s")


# -- the cold HSM alone, with the test as its hot side ------------------------------------------


class ColdHsm:
    """`hsm-cold serve` as a real process on one end of a `SerialLine`; the test holds the other.

    The test plays the hot HSM: `client()` is a `LinkClient` with the link key taken from the
    pairing file (`hsm-cold init` writes it; we take it as `hsm-hot init` would).
    """

    def __init__(self, deployment: Deployment, *, baudrate: int | None = None) -> None:

        self.d = deployment
        # Paced even when no rate is asked for: a pty takes a few KiB, a burst would overrun it.
        ports = self.d.data_dir / "dev"
        self.line = SerialLine(ports / "test-hot", ports / "test-cold", baudrate or 921600)
        self.line.start()
        self.d.configure({"serial": {"cold_port": str(self.line.cold.link)}})
        self.process: TestProcess | None = None
        self.link_key = b""
        self.identity = b""
        self._counters: Any = None
        self._clients: list[Any] = []

    @property
    def section(self) -> Any:
        return self.d.config.section("hsm_cold")

    def init(self) -> str:
        out = self.d.cli("init", "--dir", str(self.d.data_dir), module="hsm_cold.cli", timeout=120)
        return out.stdout

    def start(self) -> ColdHsm:

        self.init()
        bundle = take_pairing_file(self.section.path("pairing_file"))
        self.link_key, self.identity = bundle.link_key, bundle.cold_identity
        self._counters = MemoryCounterStore()
        self.process = self.d.start_cli("hsm-cold", "hsm_cold.cli", "serve", timeout=60)
        return self

    def client(self, link_key: bytes | None = None, **config: Any) -> Any:
        """A link client on the hot end (one at a time: close the previous one first)."""

        counters = self._counters if link_key is None else MemoryCounterStore()
        c = LinkClient.open(
            str(self.line.hot.link),
            link_key or self.link_key,
            counters,
            LinkConfig(**{"resend_after": 2.0, **config}),
            name="test-hot",
        )
        self._clients.append(c)
        return c

    def cold_cli(self, *args: str, stdin: str | None = None) -> Any:
        """`hsm-cold <args>` at the cold console, run to completion (not checked)."""

        return subprocess.run(
            [sys.executable, "-m", "hsm_cold.cli", *args, "--dir", str(self.d.data_dir)],
            env=self.d.env,
            cwd=self.d.data_dir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def confirm(self, account: int, vdevice_identity: bytes | str, *options: str) -> str:
        """The officer at the cold console confirms a pending account (`LOOSE_POLICY` unless
        `options` say otherwise), typing the fingerprint read off the customer's phone."""
        result = confirm_account(self.d, account, vdevice_identity, *options)
        return result

    def stop(self) -> list[str]:
        for c in self._clients:
            c.close()
        problems = self.d.stop()
        self.line.close()
        return problems


# -- a tap on the hot end of the line -----------------------------------------------------------


def running_cold_hsm(base: Path, config: dict[str, Any]) -> Iterator[ColdHsm]:
    """A module's cold HSM in a deployment under `base` with `config`, stopped cleanly after."""
    hsm = ColdHsm(Deployment(base, config=config))
    try:
        hsm.start()
        yield hsm
    finally:
        problems = hsm.stop()
        assert not problems, problems


class SerialTap:
    """A pty the hot side opens instead of the line's hot end, relayed both ways.

    It records what the hot side sends (to replay it later) and lets anything else be written
    onto the line from the hot end: another program on the cold HSM's serial port.
    """

    def __init__(self, line_path: Path) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._line = os.open(line_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._line)
        self._lock = threading.Lock()
        self._recording: bytearray | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial-tap", daemon=True)
        self._thread.start()

    def record(self) -> None:
        with self._lock:
            self._recording = bytearray()

    def recorded(self) -> bytes:
        with self._lock:
            data, self._recording = bytes(self._recording or b""), None
        return data

    def inject(self, data: bytes) -> None:
        """Write `data` onto the line as if the hot side had sent it."""
        with self._lock:
            _write_all(self._line, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._line):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master, self._line], [], [], 0.05)
            if self._master in ready:
                data = os.read(self._master, 4096)
                with self._lock:
                    if self._recording is not None:
                        self._recording += data
                    _write_all(self._line, data)
            if self._line in ready:
                data = os.read(self._line, 4096)
                _write_all(self._master, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- a probe of the hot token, run as its own process --------------------------------------------


def probe_hot_key(data_dir: str, label: str) -> dict[str, Any]:
    """Log in to the hot token as hsm-hot does and try to read the private key's value."""

    section = load_config(Path(data_dir), role="hsm-hot").section("hsm_hot")
    out: dict[str, Any] = {}
    with HsmToken.open(section) as token:
        out["public_key"] = token.keys.public_key(label).hex()
        with token.session.operation("probe") as s:
            key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=label)
            out["sensitive"] = bool(key[Attribute.SENSITIVE])
            out["extractable"] = bool(key[Attribute.EXTRACTABLE])
        try:
            with token.session.operation("read the private value"):
                key[Attribute.VALUE]
            out["value"] = "READABLE"
        except KeyProtected:
            out["value"] = "KeyProtected"
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        print(json.dumps(probe_hot_key(sys.argv[2], os.environ["PROBE_LABEL"])))


# Wide limits for tests about other things than the spending policy (still limits: a policy
# has no "unlimited").
LOOSE_POLICY = (
    "--max-send-sat=2000000000000",
    "--max-daily-sat=2000000000000",
    "--max-sends-per-hour=100000",
    "--approval-above-sat=2000000000000",
)


def create_account(deployment: Deployment, name: str, vdev: VDevice) -> dict[str, Any]:
    """`custody account create` as the operator runs it (the test phones, settlement wallet 1,
    the V-device's identity); its JSON answer (`account_id`, `tokens`)."""
    out = deployment.cli(
        "account", "create", name, "--dir", str(deployment.data_dir),
        "--vdevice-phone", PHONES["vdevice_phone"],
        "--owner-phone", PHONES["owner_phone"],
        "--settlement-descriptor", settlement_descriptor(1),
        "--vdevice-identity", vdev.identity_hex,
    ).stdout  # fmt: skip
    created: dict[str, Any] = json.loads(out)
    return created


def site_batch_fetch(d: Deployment, token: str, batch_no: int) -> tuple[requests.Response, float]:
    """`GET /address/batch/N` on the custody API as the merchant site asks it (its deadline in
    `X-CC-Deadline` and as the request's timeout); the answer and the seconds it took."""
    url = f"http://127.0.0.1:{d.port('custody')}/api/v1/open/address/batch/{batch_no}"
    began = time.monotonic()
    headers = {"token": token, "X-CC-Deadline": str(SITE_DEADLINE)}
    answer = requests.get(url, headers=headers, timeout=SITE_DEADLINE)
    return answer, time.monotonic() - began


def confirm_account(
    deployment: Deployment, account: int, vdevice_identity: bytes | str, *options: str
) -> str:
    """`hsm-cold confirm-account` as the officer types it (the PIN on stdin)."""
    identity = (
        bytes.fromhex(vdevice_identity) if isinstance(vdevice_identity, str) else vdevice_identity
    )
    pin = deployment.config.section("hsm_cold").str("user_pin")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsm_cold.cli",
            "confirm-account",
            str(account),
            "--vdevice-fingerprint",
            fingerprint(identity),
            "--pin-stdin",
            *(options or LOOSE_POLICY),
            "--dir",
            str(deployment.data_dir),
        ],
        env=deployment.env,
        cwd=deployment.data_dir,
        input=pin + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
