"""What the demo scenario (`cc_demo/scenario.py`) drives, through the parts' real interfaces.

Each helper is one outside actor or one window onto a part: the operator's command-line tools
(run as subprocesses), the merchant's and the V-device's HTTP APIs, the node's JSON-RPC, the
carrier's control socket (the phones of the owner, the operator and an attacker), a demo
faucet that pays like any other wallet would, and the consoles that read a part's own state
(the cold HSM's, custody's database: what an operator or an attacker holding it would see).

Every wait is a poll with a deadline that fails with "timed out waiting for X". Nothing here
prints a key, a token or a PIN: tokens travel on stdin and in HTTP headers only.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import requests
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from cc_common.config_write import write_settings
from cc_common.poll import poll_until
from custody import supervisor as sv
from custody.chain.rpc import BitcoinRPC
from custody.db import database_url, make_engine, make_session_factory
from firmware_sim.control import ControlClient
from hsm_cold.cli import ColdPaths
from hsm_cold.store import ColdStore
from wallet_core import secp, signatures
from wallet_core.addresses import address_to_script, p2wpkh_address
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.wallets import KeyOrigin

T = TypeVar("T")

SAT_PER_BTC = 100_000_000
Coin = tuple[str, int, int]  # (txid, vout, sat)
POLL = 0.2
HTTP_TIMEOUT = 15.0
CLI_TIMEOUT = 120.0

# The demo's own switches, written into the deployment's configuration before `custody up`
# (`python -m cc_demo --configure`). Demo only: no production default changes.
# The demo account's spending policy allows an exchange's volume (the money steps send a burst
# of ten withdrawals in one block interval): the default per-send limit and approval
# threshold stay, the daily total and the hourly count are raised, on the phone and in the
# cold HSM alike.
DEMO_VOLUME: dict[str, Any] = {"max_daily_sat": 300_000_000, "max_sends_per_hour": 60}

DEMO_CONFIG: dict[str, Any] = {
    # a hacked site may store a withdrawal it could not encrypt (attack: bad vtest)
    "merchant_site": {"allow_raw_vtest": True},
    # the carrier logs SMS bodies, so the demo can take an old SMS to replay
    "firmware_sim": {"carrier": {"log_bodies": True}},
    # short poll intervals: the story runs in seconds, not minutes
    "vdevice": {
        "poll_interval": 0.3,
        "tx_poll_max_interval": 1.0,
        # 5 s owner codes: each is good once, so the owner's commands need not wait 30 s
        "owner_code_period": 5,
        # ten sends in flight at once: the burst's withdrawals reach custody together and batch
        "max_in_flight": 10,
        "policy": dict(DEMO_VOLUME),
    },
    "custody": {
        "worker_interval": 0.3,
        "send_wait_seconds": 0.5,
        # batched payouts: the sends of an account pending together go out in one transaction
        "batch_sends": True,
        "webhook_timeout_seconds": 2.0,
        "webhook_backoff_initial": 0.5,
        "webhook_backoff_max": 2.0,
        "webhook_interval": 0.2,
    },
    "hsm_cold": {"sms_poll_interval": 0.5, "policy": dict(DEMO_VOLUME)},
}


class StepFailed(Exception):
    """The step ran and what it checks is not true."""


class StepSkipped(Exception):
    """The part this step shows is not built or not running yet."""


def btc(sat: int) -> str:
    """Satoshi as BTC text: 12500000 -> '0.125 BTC'."""
    text = f"{Decimal(sat) / SAT_PER_BTC:.8f}".rstrip("0").rstrip(".")
    return f"{text} BTC"


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = POLL
) -> T:
    """Poll `predicate` until it returns something truthy; StepFailed at the deadline."""
    return poll_until(predicate, timeout, what, interval=interval, error=StepFailed)


def merge_config(data_dir: Path, changes: Mapping[str, Any]) -> None:
    """Merge nested `changes` into every file of `data_dir` that holds them (the map and the
    role files of the processes that read them)."""
    write_settings(data_dir, changes)


# --------------------------------------------------------------------------- command lines


@dataclass
class Cli:
    """The operators' command-line tools on this deployment, each a subprocess."""

    data_dir: Path
    env: Mapping[str, str] | None = None

    def run(self, module: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = [sys.executable, "-m", module, *args, "--dir", str(self.data_dir)]
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                env=dict(self.env) if self.env is not None else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{module} {args[0]}` still runs after {CLI_TIMEOUT:.0f}s") from None
        if check and done.returncode != 0:
            error = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise StepFailed(f"`{module} {args[0]}` exited {done.returncode}: {error}")
        return done.stdout


# --------------------------------------------------------------------------- HTTP


class HttpFailed(StepFailed):
    def __init__(self, what: str, status: int, body: Any) -> None:
        super().__init__(f"{what}: HTTP {status} {str(body)[:200]}")
        self.status = status
        self.body = body


@dataclass
class Http:
    """A JSON-over-HTTP client of one base URL, with an optional fixed header."""

    base: str
    header: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        import requests  # noqa: PLC0415 (only the demo needs it here)

        self._session = requests.Session()
        if self.header is not None:
            self._session.headers[self.header[0]] = self.header[1]

    def call(self, method: str, path: str, **kwargs: Any) -> Any:

        try:
            resp = self._session.request(method, self.base + path, timeout=HTTP_TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise StepFailed(f"{method} {path}: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise HttpFailed(f"{method} {path}", resp.status_code, body)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def post(self, path: str, data: Mapping[str, Any]) -> Any:
        return self.call("POST", path, data=dict(data))


def custody_api(config: Config, token: str) -> Http:
    """Custody's section-1 API with one account token (the header `token`)."""
    s = config.section("custody")
    return Http(f"http://{s.str('host')}:{s.int('port')}/api/v1/open", ("token", token))


def merchant_site(config: Config) -> Http:
    """The merchant's own pages of the reference site (`/merchant/...`)."""
    s = config.section("merchant_site")
    admin = s.str("admin_token", "")
    return Http(
        f"http://{s.str('host')}:{s.int('port')}", ("X-Merchant-Token", admin) if admin else None
    )


# --------------------------------------------------------------------------- the node


def node_rpc(config: Config) -> BitcoinRPC:
    return BitcoinRPC.from_config(config)


def network_of(config: Config) -> Network:
    return Network.from_name(config.section("deployment").str("network", "regtest"))


def random_address(network: Network) -> str:
    """A P2WPKH address of a throwaway key: a payee (or an attacker) outside the wallet."""

    return p2wpkh_address(secp.pubkey_from_privkey(secrets.token_bytes(32)), network)


class Faucet:
    """A demo wallet with one key: mines coinbase to itself and pays like any other wallet.

    Its payments are ordinary signed P2WPKH transactions (wallet_core's PSBT), so a deposit
    shows in the mempool before it is mined, as a real one would. It assumes nothing about
    the chain: on a node with history the block subsidy has halved (every 150 blocks on
    regtest), so it mines as many coinbases as a payment needs and spends several coins.
    """

    FEE = 5_000
    MAX_REFILL_BLOCKS = 1_000  # coinbases mined for one payment at most (subsidy near zero)

    def __init__(self, rpc: Any, network: Network) -> None:

        self.rpc = rpc
        self.network = network
        self._priv = secrets.token_bytes(32)
        self.pub = secp.pubkey_from_privkey(self._priv)
        self.address = p2wpkh_address(self.pub, network)
        self._coins: list[Coin] = []  # spendable (mature coinbase, or our own change)
        self._spent: dict[str, tuple[list[Coin], Coin]] = {}

    def _refill(self, need: int) -> None:
        """Mine coinbases to the faucet until they hold `need` sat, then 100 blocks on top,
        so they are spendable."""
        got = 0
        for _ in range(self.MAX_REFILL_BLOCKS):
            (block_hash,) = self.rpc.generate_to_address(1, self.address)
            coinbase = self.rpc.get_block(block_hash, 2)["tx"][0]
            sat = int(Decimal(str(coinbase["vout"][0]["value"])) * SAT_PER_BTC)
            self._coins.append((coinbase["txid"], 0, sat))
            got += sat
            if got >= need:
                break
        self.rpc.generate_to_address(100, random_address(self.network))

    def _take(self, need: int) -> list[Coin]:
        """Coins worth at least `need` sat (largest first), mining more if short."""
        have = sum(c[2] for c in self._coins)
        if have < need:
            self._refill(need - have)
        self._coins.sort(key=lambda c: c[2], reverse=True)
        taken: list[Coin] = []
        while sum(c[2] for c in taken) < need:
            if not self._coins:
                raise StepFailed(f"the faucet cannot gather {btc(need)}")
            taken.append(self._coins.pop(0))
        return taken

    def pay(self, payments: list[tuple[str, int]]) -> str:
        """Broadcast one transaction paying `payments` (address, sat); change to itself.

        It signals BIP125, so `replace` can take its place while it is unconfirmed.
        """
        coins = self._take(sum(v for _, v in payments) + self.FEE)
        sent, change = self._spend(coins, payments, self.FEE)
        self._coins.append(change)  # spendable once mined
        self._spent[sent] = (coins, change)
        return sent

    def replace(self, txid: str, payments: list[tuple[str, int]], fee: int) -> str:
        """A BIP125 replacement of our unconfirmed `txid`, paying `payments` instead."""
        coins, old_change = self._spent.pop(txid)
        sent, change = self._spend(coins, payments, fee)
        self._coins[self._coins.index(old_change)] = change
        self._spent[sent] = (coins, change)
        return sent

    def _spend(
        self, coins: list[Coin], payments: list[tuple[str, int]], fee: int
    ) -> tuple[str, Coin]:
        value = sum(c[2] for c in coins)
        total = sum(v for _, v in payments)
        spk = address_to_script(self.address, self.network)
        outputs = [PsbtOutput(address_to_script(a, self.network), v) for a, v in payments]
        change = value - total - fee
        if change < 0:
            raise StepFailed(f"the faucet's coins of {btc(value)} cannot pay {btc(total)}")
        outputs.append(PsbtOutput(spk, change))
        origin = {self.pub: KeyOrigin(b"\0" * 4, ())}
        psbt = Psbt.create(
            [PsbtInput(txid, vout, sat, spk, origins=origin) for txid, vout, sat in coins],
            outputs,
        )
        psbt.sign(lambda digest: signatures.sign_digest(self._priv, digest), self.pub)
        psbt.finalize()
        sent = str(self.rpc.send_raw_transaction(psbt.extract_hex()))
        return sent, (sent, len(outputs) - 1, change)


def mempool(rpc: Any) -> set[str]:
    return set(rpc.get_raw_mempool())


def node_tx(rpc: Any, txid: str, depth: int = 200) -> tuple[dict[str, Any], str | None] | None:
    """(transaction, block hash or None) from the mempool or the last `depth` blocks, as a
    node without txindex (Core's default) allows: getrawtransaction only with the block hash
    for a mined transaction. None if neither has it."""
    if txid in mempool(rpc):
        with suppress(Exception):  # mined or evicted meanwhile: look in the blocks
            return dict(rpc.get_raw_transaction(txid, True)), None
    tip = int(rpc.get_block_count())
    for height in range(tip, max(tip - depth, -1), -1):
        block_hash = str(rpc.get_block_hash(height))
        if txid in rpc.get_block(block_hash, 1)["tx"]:
            return dict(rpc.get_raw_transaction(txid, True, block_hash)), block_hash
    return None


def mine(rpc: Any, network: Network, blocks: int = 1) -> list[str]:
    """Mine `blocks` regtest blocks paying a throwaway address."""
    return list(rpc.generate_to_address(blocks, random_address(network)))


# --------------------------------------------------------------------------- phones and SMS


def carrier(config: Config) -> ControlClient:
    path = config.section("firmware_sim").path("control_socket")
    return ControlClient(path)


def inbox_texts(control: Any, number: str) -> list[str]:
    return [str(m.get("text", "")) for m in control.inbox(number)]


def wait_inbox(control: Any, number: str, needle: str, seen: int, timeout: float, who: str) -> str:
    """Wait for a new SMS (after the first `seen`) containing `needle` in `number`'s inbox."""

    def find() -> str | None:
        return next((t for t in inbox_texts(control, number)[seen:] if needle in t), None)

    return wait_for(find, timeout, f"an SMS to {who} ({number}) containing {needle!r}")


# --------------------------------------------------------------------------- consoles


@contextmanager
def cold_console(config: Config) -> Iterator[Any]:
    """The cold HSM's state as its own console shows it (`hsm-cold status`); read only."""

    path = ColdPaths.of(config.section("hsm_cold")).store
    if not path.exists():
        raise StepFailed(f"no cold HSM state at {path}")
    store = ColdStore(path)
    try:
        yield store
    finally:
        store.close()


@dataclass(frozen=True)
class ColdView:
    frozen: dict[int, str]
    channels: dict[str, str]  # c_id -> state
    counters: dict[str, int]


def cold_view(config: Config) -> ColdView:
    with cold_console(config) as store:
        return ColdView(
            frozen={a: r for a, f, r in store.list_accounts() if f},
            channels={c.c_id: c.state for c in store.list_channels()},
            counters=dict(store.counters()),
        )


def custody_db(config: Config) -> sessionmaker[Session]:
    """A session factory on custody's database (what an operator, or an attacker, holds)."""
    return make_session_factory(make_engine(database_url(config), pool_size=1))


def process_pid(config: Config, name: str) -> int | None:
    """The pid of a supervised process as `custody status` shows it (None: not running)."""

    for row in sv.read_status(config).rows:
        if row.name == name and row.pid:
            return row.pid
    return None


def vdevice_status(cli: Cli) -> dict[str, Any]:
    return dict(json.loads(cli.run("vdevice.cli", "status", "--json")))


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"
