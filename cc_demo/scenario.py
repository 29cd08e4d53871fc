"""The end-to-end demo scenario (`python -m cc_demo --dir D`), run by `scripts/demo`.

It runs against a deployment started by `custody up` (every part its own OS process) and goes
only through the parts' real interfaces: the operators' command-line tools, the merchant
site's and custody's HTTP APIs, the node's JSON-RPC, the carrier (SMS from the owner's and an
attacker's phones), and the consoles an operator, or an attacker holding the database, has.

The story, one step each, each printing one line saying what it proved:

 1. status            every process runs and is ready (`custody status`)
 2. account           an account on the HSM pair; the V-device provisioned; the site has tokens
 3. channel           the V-device opens its identity-signed SMS channel with the cold HSM
 4. batches           cold batch 0 and hot batch 0 fetched by the site, verified by SMS
 5. deposit           coin to a verified cold address: in `/tx` from the mempool, then confirmed
 6. hot-funding       the hot wallet funded on a verified hot batch-0 address
 7. withdrawal        the merchant's two-output withdrawal: V-device countersigns, both HSMs
                      sign, mined; the site shows the hash; the block pays exactly those outputs
 8. attack-batch      a hacked API serves a batch with one address substituted: failed, alerted
 9. attack-vtest      a hacked site enqueues what it cannot encrypt: refused, loop stops until
                      the owner's `CC:START_LOOP`
10. attack-forged-vc  a hacked API posts a send with a forged `vc_code`: the cold HSM refuses,
                      freezes, the operator gets an SMS, nothing reaches the node; unfrozen at
                      the cold console
11. attack-outputs    a hacked database alters the outputs of a genuine request: the same
12. attack-fee-drain  (cc_demo/steps_attacks.py) a hacked custody host asks hsm-hot, from two
                      threads, to co-sign one genuine request with an input stated as 1 sat:
                      refused, frozen, operator texted, nothing reaches the node; unfrozen
13. attack-sms        a spoofed channel request and replayed SMS: refused, nothing changes
14. attack-site-drain (cc_demo/steps_policy.py) a hacked site tries to empty the hot wallet:
                      only what the spending policy allows goes, a large send waits
15. owner-approval    a small payout queued behind a held large one goes; the owner approves
                      the large one with a one-time code: mined

A summary table ends the run; the exit status is 1 if any step failed or could not run.
`--configure` writes the demo's switches (`support.DEMO_CONFIG`: short poll intervals,
the carrier logging SMS bodies, a site allowed to store a raw vtest) into the configuration;
`scripts/demo` runs it after `custody init`. `cc_demo/run.py` puts the steps in order (STEPS)
and runs them; `tests/test_e2e.py` runs these same steps.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cc_common.config import Config
from cc_common.sms import channel_messages as cm
from cc_common.vtest import encrypt_vtest, vtest_plaintext
from cc_demo.support import (
    SAT_PER_BTC,
    Cli,
    ColdView,
    Faucet,
    Http,
    HttpFailed,
    StepFailed,
    StepSkipped,
    btc,
    carrier,
    cold_view,
    custody_api,
    custody_db,
    inbox_texts,
    mempool,
    merchant_site,
    mine,
    network_of,
    new_id,
    node_rpc,
    node_tx,
    process_pid,
    random_address,
    vdevice_status,
    wait_for,
    wait_inbox,
)
from custody import supervisor as sv
from custody.models import AddressBatch, Send, Wallet
from vdevice.sends import user_tx_no_for
from wallet_core import secp
from wallet_core.bip32 import ExtendedKey
from wallet_core.chaincloud import send_request_string
from wallet_core.descriptors import wpkh_descriptor
from wallet_core.messages import sign_message
from wallet_core.wallets import AccountKey, bip84_account_path

__all__ = ["Context", "Outcome", "Step", "StepFailed", "StepSkipped"]

# Deadlines (seconds); each is far above what the step takes on a laptop.
CHANNEL_TIMEOUT = 60.0
BATCH_TIMEOUT = 90.0
CHAIN_TIMEOUT = 30.0
SEND_TIMEOUT = 90.0
SMS_TIMEOUT = 30.0

DEPOSIT_SAT = 50_000_000  # 0.5 BTC to a cold address
DEPOSIT_BLOCKS = 3
HOT_FUNDING_SAT = 100_000_000  # 1 BTC to the hot wallet
PAYMENTS_SAT = (10_000_000, 2_500_000)  # the merchant's withdrawal: 0.1 + 0.025 BTC
ATTACK_SAT = 20_000_000
ALTERED_SAT = 3_000_000
TAMPERED_POSITION = 7
ATTACKER_NUMBER = "+15559990666"
FORGED_VC_CODE = 40  # custody.errors.ForgedVcCode


class Outcome:
    PASSED = "PASS"
    FAILED = "FAIL"
    SKIPPED = "SKIP"


@dataclass
class Context:
    """What steps share: the configuration, the clients, and the facts earlier steps found.

    Tokens live here only, in memory: they go to the tools on stdin and to custody in the
    `token` header, and are never printed.
    """

    config: Config
    status: sv.Status | None = None
    env: Mapping[str, str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cli = Cli(self.config.data_dir, self.env)
        self.network = network_of(self.config)
        self.site = merchant_site(self.config)
        self._rpc: Any = None
        self._faucet: Faucet | None = None

    # -- facts from earlier steps

    def need(self, name: str) -> Any:
        if name not in self.facts:
            raise StepSkipped(f"needs the {name} of an earlier step, which did not pass")
        return self.facts[name]

    def custody(self, side: str) -> Http:
        return custody_api(self.config, self.need(f"{side}_token"))

    # -- parts

    @property
    def rpc(self) -> Any:
        if self._rpc is None:
            self._rpc = node_rpc(self.config)
        return self._rpc

    @property
    def faucet(self) -> Faucet:
        if self._faucet is None:
            self._faucet = Faucet(self.rpc, self.network)
        return self._faucet

    @property
    def carrier(self) -> Any:
        return carrier(self.config)

    def number(self, section: str, key: str) -> str:
        return self.config.section(section).str(key)

    @property
    def vdevice_number(self) -> str:
        return self.number("vdevice", "number")

    @property
    def owner_number(self) -> str:
        return self.number("phones", "owner")

    @property
    def operator_number(self) -> str:
        return self.number("phones", "operator")

    @property
    def cold_numbers(self) -> list[str]:
        return [str(n) for n in self.config.section("hsm_cold").list("numbers")]


@dataclass(frozen=True)
class Step:
    """One demo step: `run` returns a sentence saying what it proved, or raises."""

    name: str
    run: Callable[[Context], str]


# --------------------------------------------------------------------------- small checks


def site_batch(ctx: Context, kind: str, batch_no: int) -> dict[str, Any] | None:
    for b in ctx.site.get("/merchant/batches"):
        if b["type"] == kind and b["batch_no"] == batch_no:
            return dict(b)
    return None


def site_withdrawal(ctx: Context, vtest_id: str) -> dict[str, Any]:
    for w in ctx.site.get("/merchant/withdrawals"):
        if w["vtest_id"] == vtest_id:
            return dict(w)
    raise StepFailed(f"the site lost withdrawal {vtest_id}")


def wait_site_finished(ctx: Context, vtest_id: str, timeout: float = SEND_TIMEOUT) -> dict:
    return wait_for(
        lambda: (w := site_withdrawal(ctx, vtest_id))["status"] != "pending" and w,
        timeout,
        f"the V-device to report withdrawal {vtest_id} to the site",
    )


def custody_batch_status(ctx: Context, wallet: str, batch_no: int) -> str | None:

    with custody_db(ctx.config)() as s:
        status = s.execute(
            select(AddressBatch.status).where(
                AddressBatch.account_id == ctx.need("account_id"),
                AddressBatch.wallet == Wallet[wallet.upper()],
                AddressBatch.batch_no == batch_no,
            )
        ).scalar_one_or_none()
    return None if status is None else str(status.value)


def find_tx(api: Http, txid: str) -> dict[str, Any] | None:
    """The account's transaction `txid` from `GET /tx`, paging through (20 a page)."""
    after: str | None = None
    while True:
        page = api.get("/tx", **({"tx_hash": after} if after else {}))
        for tx in page:
            if tx["tx_hash"] == txid:
                return dict(tx)
        if len(page) < 20:
            return None
        after = page[-1]["tx_hash"]


def tx_detail(ctx: Context, side: str, txid: str) -> dict[str, Any] | None:
    """GET /tx/detail/<txid>, or None while custody has not seen the transaction yet."""
    try:
        return dict(ctx.custody(side).get(f"/tx/detail/{txid}"))
    except HttpFailed as exc:
        if exc.status == 404:
            return None
        raise


def send_state(ctx: Context, user_tx_no: str) -> dict[str, Any]:
    return dict(ctx.custody("hot").get(f"/tx/{user_tx_no}"))


def wait_send_final(ctx: Context, user_tx_no: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := send_state(ctx, user_tx_no))["hot_wallet_tx_status"] != "pending" and s,
        SEND_TIMEOUT,
        f"custody to finish send {user_tx_no}",
    )


def balance(ctx: Context, side: str) -> int:
    return int(ctx.custody(side).get("/user")["balance"])


def tx_outputs(ctx: Context, txid: str) -> list[tuple[str, int]]:
    found = node_tx(ctx.rpc, txid)
    if found is None:
        raise StepFailed(f"transaction {txid} is neither in the mempool nor in a recent block")
    raw = found[0]
    return [
        (o["scriptPubKey"].get("address", ""), int(Decimal(str(o["value"])) * SAT_PER_BTC))
        for o in raw["vout"]
    ]


def expect_no_spend(ctx: Context, pool_before: set[str], height_before: int, payee: str) -> str:
    """Nothing new reached the node: no new mempool transaction, no new block, and nothing
    in the mempool pays `payee`."""
    pool = mempool(ctx.rpc)
    new = pool - pool_before
    for txid in pool:
        if any(a == payee for a, _ in tx_outputs(ctx, txid)):
            raise StepFailed(f"transaction {txid} paying the attacker is in the mempool")
    if new:
        raise StepFailed(f"new transactions reached the node: {sorted(new)}")
    height = ctx.rpc.get_block_count()
    if height != height_before:
        raise StepFailed(f"blocks were mined meanwhile ({height_before} -> {height})")
    return f"mempool unchanged ({len(pool)} tx), height {height}"


def owner_code(ctx: Context) -> str:
    """What the owner's authenticator shows (the demo holds the secret `vdevice provision`
    showed once): each code is good once, so a second command in the same period uses the
    next step's code, waiting for it if need be (the demo enrols with short periods)."""
    import pyotp  # noqa: PLC0415

    totp = pyotp.TOTP(
        ctx.need("owner_totp_secret"), interval=ctx.facts.get("owner_totp_period", 30)
    )
    step = max(int(time.time() // totp.interval), ctx.facts.get("owner_last_step", 0) + 1)
    wait_for(lambda: int(time.time() // totp.interval) + 1 >= step, 40.0, "the next one-time code")
    ctx.facts["owner_last_step"] = step
    return totp.at(step * totp.interval)


def owner_command(ctx: Context, command: str, answer: str) -> None:
    """The owner texts the V-device `command` and waits for `answer`; a command that changes
    something gets the owner's one-time code appended."""
    if command in ("CC:START_LOOP", "CC:STOP_LOOP"):
        command = f"{command}:{owner_code(ctx)}"
    control = ctx.carrier
    seen = len(inbox_texts(control, ctx.owner_number))
    control.inject_sms(ctx.vdevice_number, command, ctx.owner_number)
    wait_inbox(control, ctx.owner_number, answer, seen, SMS_TIMEOUT, "the owner")


def unfreeze(ctx: Context) -> None:
    """The operator's local action at the cold console: `hsm-cold unfreeze`, PIN on stdin."""
    account = ctx.need("account_id")
    pin = ctx.config.section("hsm_cold").secret("user_pin")
    ctx.cli.run("hsm_cold.cli", "unfreeze", str(account), "--pin-stdin", stdin=pin + "\n")
    if account in cold_view(ctx.config).frozen:
        raise StepFailed(f"account {account} is still frozen after `hsm-cold unfreeze`")
    if "hot_token" in ctx.facts:  # custody follows the cold HSM's signed state within seconds
        wait_for(
            lambda: ctx.custody("hot").get("/user").get("status") == "active",
            SMS_TIMEOUT,
            f"custody to show account {account} active again",
        )


def expect_frozen_and_alerted(ctx: Context, operator_seen: int, what: str) -> str:
    account = ctx.need("account_id")
    reason = wait_for(
        lambda: cold_view(ctx.config).frozen.get(account),
        SMS_TIMEOUT,
        f"the cold HSM to freeze account {account}",
    )
    if what not in reason:
        raise StepFailed(f"account frozen, but for {reason!r} (expected {what!r})")
    wait_inbox(
        ctx.carrier,
        ctx.operator_number,
        f"account {account} frozen by cold HSM",
        operator_seen,
        SMS_TIMEOUT,
        "the operator",
    )
    return reason


@contextmanager
def unfrozen_on_failure(ctx: Context) -> Iterator[None]:
    """If the step fails with the account frozen, unfreeze it so that later steps can run."""
    try:
        yield
    except BaseException:
        with suppress(Exception):
            if ctx.need("account_id") in cold_view(ctx.config).frozen:
                unfreeze(ctx)
        raise


@contextmanager
def worker_paused(ctx: Context) -> Iterator[int]:
    """SIGSTOP the custody worker (outside a database write), SIGCONT it on the way out."""
    pid = process_pid(ctx.config, "custody-worker")
    if pid is None:
        raise StepFailed("custody-worker does not run (custody status shows no pid)")
    url = str(ctx.config.section("custody").str("database_url"))
    lock = None
    if url.startswith("sqlite:///"):
        # Hold SQLite's write lock while stopping, so the worker is not stopped holding it.
        lock = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30.0)
        lock.execute("BEGIN IMMEDIATE")
    try:
        os.kill(pid, signal.SIGSTOP)
        _wait_stopped(pid)  # the signal lands later: released before, the lock could be taken
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def _wait_stopped(pid: int, within: float = 5.0) -> None:
    """Return once `pid` is stopped (state T in /proc), or after `within` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("T", "t"):
            return
        time.sleep(0.005)


# --------------------------------------------------------------------------- the steps


def step_status(ctx: Context) -> str:
    status = ctx.status or sv.read_status(ctx.config)
    if status.supervisor_pid is None:
        raise StepFailed("no supervisor runs; start it with `custody up`")
    if not status.all_ready:
        late = [f"{r.name} ({r.state})" for r in status.rows if not r.ready]
        raise StepFailed(f"not every process is ready: {', '.join(late) or status.phase}")
    names = ", ".join(r.name for r in status.rows)
    return f"`custody up` runs {len(status.rows)} processes, each its own, all ready: {names}"


def settlement_descriptor(ctx: Context) -> str:
    """The customer's settlement wallet: a BIP84 descriptor of a fresh demo key."""

    root = ExtendedKey.from_seed(secrets.token_bytes(32), ctx.network)
    acct = AccountKey.from_root(root, bip84_account_path(ctx.network, 0))
    return str(wpkh_descriptor(acct.xpub, acct.fingerprint, acct.path, 0))


def step_account(ctx: Context) -> str:
    """Out of band: the officer reads the cold fingerprint to the customer, who types it into
    the phone; the customer reads the phone's fingerprint to the officer, who types it at the
    cold console. Custody carries the keys, but cannot swap either unnoticed."""
    from urllib.parse import parse_qs, urlparse  # noqa: PLC0415

    identity, vdevice_fp = _vdevice_identity(ctx)
    created = json.loads(
        ctx.cli.run(
            "custody.cli",
            "account",
            "create",
            "demo",
            "--vdevice-phone",
            ctx.vdevice_number,
            "--owner-phone",
            ctx.owner_number,
            "--settlement-descriptor",
            settlement_descriptor(ctx),
            "--vdevice-identity",
            identity,
        )
    )
    account = int(created["account_id"])
    bundle = created["vdevice_bundle"]
    pin = ctx.config.section("hsm_cold").secret("user_pin")
    ctx.cli.run(
        "hsm_cold.cli", "confirm-account", str(account), "--vdevice-fingerprint", vdevice_fp,
        "--pin-stdin", stdin=pin + "\n",
    )  # fmt: skip
    cold_fp = ctx.cli.run("hsm_cold.cli", "identity").strip()  # read at the cold console
    shown = ctx.cli.run(
        "vdevice.cli", "provision", "--bundle", "-", "--cold-fingerprint", cold_fp,
        stdin=json.dumps(bundle),
    )  # fmt: skip
    uri = next(line for line in shown.splitlines() if line.startswith("otpauth://"))
    query = parse_qs(urlparse(uri).query)
    ctx.facts["owner_totp_secret"] = query["secret"][0]
    ctx.facts["owner_totp_period"] = int(query.get("period", ["30"])[0])
    cold, hot = created["tokens"]["cold"], created["tokens"]["hot"]
    ctx.cli.run(
        "examples.merchant_site.cli", "set-tokens", "--cold", "-", "--hot", "-",
        stdin=f"{cold}\n{hot}\n",
    )  # fmt: skip
    ctx.facts.update(account_id=account, cold_token=cold, hot_token=hot)
    user = ctx.custody("cold").get("/user")
    if int(user["user_id"]) != account:
        raise StepFailed(f"the cold token opens account {user['user_id']}, not {account}")
    return (
        f"account {account} provisioned on the HSM pair; the V-device provisioned with its "
        f"bundle, the cold identity checked against the fingerprint {cold_fp} read at the "
        "cold console; the account confirmed there with the phone's fingerprint (its policy: "
        "the defaults); the owner's authenticator enrolled; the site holds the cold and hot "
        "tokens (shown once, never printed)"
    )


def _vdevice_identity(ctx: Context) -> tuple[str, str]:
    """`vdevice init`: the public key (for custody) and its fingerprint (for the officer)."""
    lines = ctx.cli.run("vdevice.cli", "init").splitlines()
    return lines[0].strip(), lines[1].split()[-1]


def step_channel(ctx: Context) -> str:
    account = ctx.need("account_id")

    def live() -> dict[str, Any] | None:
        channel = vdevice_status(ctx.cli).get("channel")
        return channel if channel and channel.get("live") else None

    channel = wait_for(live, CHANNEL_TIMEOUT, "the V-device to open an SMS channel")
    c_id = channel["c_id"]
    view: ColdView = wait_for(
        partial(_live_view, ctx, c_id),
        CHANNEL_TIMEOUT,
        f"the cold HSM to list channel {c_id} as live",
    )
    ctx.facts["c_id"] = c_id
    hours = channel["expires_in"] / 3600
    return (
        f"V-device opened channel {c_id} by SMS (QH signed by its identity key, QC by the cold "
        f"HSM's, CHANNEL_OK); cold HSM lists it live for account {account}, "
        f"expires in {hours:.1f}h ({view.counters.get('opened', 0)} opened)"
    )


def _live_view(ctx: Context, c_id: str) -> ColdView | None:
    """The cold HSM's view once it lists channel `c_id` as live."""
    view = cold_view(ctx.config)
    return view if view.channels.get(c_id) == "live" else None


def _deposit_confirmed(api: Http, txid: str) -> dict[str, Any] | None:
    t = find_tx(api, txid)
    return t if t and int(t["confirmation"]) >= DEPOSIT_BLOCKS else None


def _checked_site_batch(ctx: Context, kind: str) -> dict[str, Any] | None:
    """Batch 0 of `kind` on the site once the V-device gave its verdict."""
    b = site_batch(ctx, kind, 0)
    return b if b and b["status"] != "unverified" else None


def _custody_verified(ctx: Context, kind: str) -> bool:
    return custody_batch_status(ctx, kind, 0) == "verified"


def step_batches(ctx: Context) -> str:
    ctx.need("c_id")
    proved = cold_view(ctx.config).counters.get("proved", 0)
    for kind in ("cold", "hot"):
        ctx.site.post("/merchant/batches/fetch", {"type": kind, "batch_no": 0})
    for kind in ("cold", "hot"):
        b = wait_for(
            partial(_checked_site_batch, ctx, kind),
            BATCH_TIMEOUT,
            f"the V-device to verify {kind} batch 0",
        )
        if b["status"] != "verified":
            raise StepFailed(f"{kind} batch 0 is {b['status']} on the site")
        status = wait_for(
            partial(_custody_verified, ctx, kind),
            BATCH_TIMEOUT,
            f"custody to record {kind} batch 0 as verified",
        )
        assert status
    now = cold_view(ctx.config).counters.get("proved", 0)
    return (
        "site fetched cold and hot batch 0 (1000 addresses each); the V-device had the cold "
        f"HSM prove both by SMS ({now - proved} proofs) and checked them: verified on the site "
        "and in custody"
    )


def step_deposit(ctx: Context) -> str:
    cold = ctx.custody("cold")
    address = ctx.site.post("/merchant/deposit-address", {})
    txid = ctx.faucet.pay([(address["address"], DEPOSIT_SAT)])
    seen = wait_for(
        lambda: find_tx(cold, txid), CHAIN_TIMEOUT, f"deposit {txid} in custody's GET /tx"
    )
    if int(seen["confirmation"]) != 0:
        raise StepFailed(f"deposit {txid} shows {seen['confirmation']} confirmations unmined")
    if int(seen["value"]) != DEPOSIT_SAT:
        raise StepFailed(f"deposit {txid} shows value {seen['value']}, sent {DEPOSIT_SAT}")
    mine(ctx.rpc, ctx.network, DEPOSIT_BLOCKS)
    confirmed = wait_for(
        partial(_deposit_confirmed, cold, txid),
        CHAIN_TIMEOUT,
        f"deposit {txid} to show {DEPOSIT_BLOCKS} confirmations",
    )
    wait_for(
        lambda: balance(ctx, "cold") == DEPOSIT_SAT,
        CHAIN_TIMEOUT,
        f"the cold balance in GET /user to reach {btc(DEPOSIT_SAT)}",
    )
    ctx.facts["deposit_txid"] = txid
    return (
        f"{btc(DEPOSIT_SAT)} paid to verified cold address #{address['index']} "
        f"(from the site's deposit-address): tx {txid} in GET /tx at 0 confirmations "
        f"from the mempool, then {confirmed['confirmation']} after mining; "
        f"GET /user balance {btc(DEPOSIT_SAT)}"
    )


def step_hot_funding(ctx: Context) -> str:
    hot = ctx.custody("hot")
    # from the site, which gives it out only if it is in a hot batch the V-device verified
    address = ctx.site.post("/merchant/funding-address", {})
    if int(address["index"]) >= 1000:
        raise StepFailed(f"hot address #{address['index']} is not in the verified batch 0")
    before = balance(ctx, "hot")
    txid = ctx.faucet.pay([(address["address"], HOT_FUNDING_SAT)])
    wait_for(lambda: find_tx(hot, txid), CHAIN_TIMEOUT, f"hot funding {txid} in GET /tx")
    mine(ctx.rpc, ctx.network, 1)
    wait_for(
        lambda: balance(ctx, "hot") == before + HOT_FUNDING_SAT,
        CHAIN_TIMEOUT,
        f"the hot balance to grow by {btc(HOT_FUNDING_SAT)}",
    )
    return (
        f"{btc(HOT_FUNDING_SAT)} paid to hot 2-of-3 address #{address['index']} (the site's "
        f"funding-address: in verified batch 0), confirmed: hot balance "
        f"{btc(before + HOT_FUNDING_SAT)}"
    )


def merchant_withdrawal(ctx: Context, payments: Sequence[tuple[str, int]]) -> str:
    """The merchant enqueues a withdrawal on its site; returns its vtest_id."""
    outs = ";".join(f"{a},{v}" for a, v in payments)
    return str(ctx.site.post("/merchant/withdrawals", {"outs": outs, "dynamic": 1})["vtest_id"])


def _mined_tx(ctx: Context, txid: str) -> tuple[dict[str, Any], str] | None:
    """The transaction and its block hash, once it is in a block."""
    found = node_tx(ctx.rpc, txid)
    return (found[0], found[1]) if found is not None and found[1] is not None else None


def check_paid(ctx: Context, txid: str, payments: Sequence[tuple[str, int]]) -> tuple[int, int]:
    """The mined transaction pays exactly `payments`, plus at most one change output to the
    account's own hot wallet. Mines a block if it waits in the mempool; returns (block
    height, fee in sat)."""
    if txid in mempool(ctx.rpc):
        mine(ctx.rpc, ctx.network, 1)
    found = wait_for(
        partial(_mined_tx, ctx, txid),
        CHAIN_TIMEOUT,
        f"transaction {txid} in a block",
    )
    height = int(ctx.rpc.get_block_header(found[1])["height"])
    rest = tx_outputs(ctx, txid)
    for payment in payments:
        if payment not in rest:
            raise StepFailed(f"transaction {txid} does not pay {payment[1]} sat to {payment[0]}")
        rest.remove(payment)
    detail = wait_for(
        lambda: tx_detail(ctx, "hot", txid), CHAIN_TIMEOUT, f"{txid} in GET /tx/detail"
    )
    change = [(o["address"], int(o["value"])) for o in detail["outputs"] if o["is_mine"]]
    if rest != change or len(rest) > 1:
        raise StepFailed(f"transaction {txid} also pays {rest}: not just the hot wallet's change")
    fee = -int(detail["value"]) - sum(v for _, v in payments)
    return height, fee


def step_withdrawal(ctx: Context) -> str:
    ctx.need("hot_token")
    payments = [(random_address(ctx.network), v) for v in PAYMENTS_SAT]
    vtest_id = merchant_withdrawal(ctx, payments)
    w = wait_site_finished(ctx, vtest_id)
    if w["status"] != "sent" or not w["tx_hash"]:
        last = vdevice_status(ctx.cli).get("last_send") or {}
        raise StepFailed(f"withdrawal {vtest_id} is {w['status']}: {last.get('reason', '?')}")
    txid = w["tx_hash"]
    state = send_state(ctx, vtest_id)
    if state["tx_hash"] != txid or state["hot_wallet_tx_status"] != "OK":
        raise StepFailed(f"custody says {state['hot_wallet_tx_status']} / {state['tx_hash']}")
    height, fee = check_paid(ctx, txid, payments)
    ctx.facts["withdrawal_txid"] = txid
    return (
        f"withdrawal {vtest_id} of {btc(PAYMENTS_SAT[0])} + {btc(PAYMENTS_SAT[1])}: the "
        f"V-device decrypted and checked it, signed vc_code under channel {state['c_id']}; "
        f"both HSMs signed; tx {txid} (fee {fee} sat) mined at height {height} pays exactly "
        "those two outputs plus change to the hot wallet; the site shows its hash"
    )


def step_attack_batch(ctx: Context) -> str:
    """The API serves the site a batch with one address substituted (cold batch 1)."""
    ctx.need("c_id")
    owner_seen = len(inbox_texts(ctx.carrier, ctx.owner_number))
    attacker = random_address(ctx.network)
    # The owner pauses the V-device while the site takes the batch, so that it only ever
    # sees the substituted copy (what a hacked API would have served).
    owner_command(ctx, "CC:STOP_LOOP", "CC:LOOP:STOPPED")
    try:
        ctx.cli.run("examples.merchant_site.cli", "fetch-batch", "--type", "cold", "--batch", "1")
        ctx.cli.run(
            "examples.merchant_site.cli", "tamper-batch", "--type", "cold", "--batch", "1",
            "--index", str(TAMPERED_POSITION), "--address", attacker,
        )  # fmt: skip
    finally:
        owner_command(ctx, "CC:START_LOOP", "CC:LOOP:RUNNING")
    b = wait_for(
        lambda: (b := site_batch(ctx, "cold", 1)) and b["status"] != "unverified" and b,
        BATCH_TIMEOUT,
        "the V-device to check the substituted cold batch 1",
    )
    if b["status"] != "failed":
        raise StepFailed(f"the substituted cold batch 1 is {b['status']} on the site")
    wait_for(
        lambda: custody_batch_status(ctx, "cold", 1) == "failed",
        BATCH_TIMEOUT,
        "custody to record cold batch 1 as failed",
    )
    alert = wait_inbox(
        ctx.carrier, ctx.owner_number, "batch 1 failed", owner_seen, SMS_TIMEOUT, "the owner"
    )
    return (
        f"cold batch 1 with position {TAMPERED_POSITION} substituted: the cold HSM's SMS proof "
        f"does not cover it, so the V-device marked it failed on the site and in custody (its "
        f"addresses are never handed out); owner's phone: {alert[:60]!r}"
    )


def step_attack_vtest(ctx: Context) -> str:
    """A hacked site enqueues a withdrawal encrypted with a password it does not have."""

    ctx.need("hot_token")
    owner_seen = len(inbox_texts(ctx.carrier, ctx.owner_number))
    attacker = random_address(ctx.network)
    blob = encrypt_vtest(vtest_plaintext(f"{attacker},{ATTACK_SAT}", 1), secrets.token_hex(8))
    vtest_id = str(ctx.site.post("/merchant/withdrawals", {"raw_vtest_info": blob})["vtest_id"])
    w = wait_site_finished(ctx, vtest_id)
    if w["status"] != "failed" or w["tx_hash"]:
        raise StepFailed(f"the undecryptable withdrawal {vtest_id} is {w['status']}")
    alert = wait_inbox(
        ctx.carrier, ctx.owner_number, "AES decrypt error", owner_seen, SMS_TIMEOUT, "the owner"
    )
    loop = wait_for(
        lambda: (s := vdevice_status(ctx.cli))["loop"] == "stopped" and s,
        SMS_TIMEOUT,
        "the V-device to stop its loop",
    )
    try:
        send_state(ctx, user_tx_no_for(vtest_id))
        raise StepFailed(f"custody holds a send for the refused withdrawal {vtest_id}")
    except StepFailed as exc:
        if "HTTP 404" not in str(exc):
            raise
    owner_command(ctx, "CC:START_LOOP", "CC:LOOP:RUNNING")
    wait_for(
        lambda: vdevice_status(ctx.cli)["loop"] == "running",
        SMS_TIMEOUT,
        "the V-device to resume its loop",
    )
    return (
        f"withdrawal {vtest_id} encrypted with a wrong password: the V-device refused it "
        f"(owner's phone: {alert[:40]!r}), told the site 'failed', posted nothing to custody, "
        f"stopped its loop ({loop['loop_reason'][:30] or 'stopped'}); the owner's CC:START_LOOP "
        "resumed it"
    )


def _attack_forged_vc(ctx: Context) -> str:
    """A thief of the hot token posts a send with a vc_code it signed with its own key."""

    account = ctx.need("account_id")
    c_id = ctx.need("c_id")
    channel = vdevice_status(ctx.cli).get("channel") or {}
    c_id = channel.get("c_id", c_id)  # the live channel, as the thief could learn it
    attacker = random_address(ctx.network)
    outs = f"{attacker},{ATTACK_SAT}"
    user_tx_no = new_id("stolen-token")
    forged = sign_message(secrets.token_bytes(32), send_request_string(outs, user_tx_no))
    pool, height = mempool(ctx.rpc), ctx.rpc.get_block_count()
    form = {"coin_code": "BTC", "user_tx_no": user_tx_no, "outs": outs, "is_dynamic_fee": 1}
    try:
        ctx.custody("hot").post("/tx/request", {**form, "vc_code": forged, "c_id": c_id})
        raise StepFailed("custody accepted a send with a forged vc_code")
    except HttpFailed as exc:
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        if exc.status != 400 or code != FORGED_VC_CODE:
            raise StepFailed(f"custody answered HTTP {exc.status} code {code}") from None
    try:
        send_state(ctx, user_tx_no)
        raise StepFailed(f"custody holds a send for the forged request {user_tx_no}")
    except HttpFailed as exc:
        if exc.status != 404:
            raise
    if account in cold_view(ctx.config).frozen:
        raise StepFailed(f"account {account} was frozen by a forged vc_code")
    node = expect_no_spend(ctx, pool, height, attacker)
    return (
        f"send {user_tx_no} with a forged vc_code under live channel {c_id}, posted with the "
        f"hot token: custody checked it against the channel key the cold HSM vouched for and "
        f"refused it (HTTP 400, code {FORGED_VC_CODE}) before any HSM saw it; account "
        f"{account} not frozen; {node}"
    )


def _attack_outputs(ctx: Context) -> str:
    """A hacked database rewrites the outputs of a genuine, V-device-signed request."""

    account = ctx.need("account_id")
    ctx.need("c_id")
    payee, attacker = random_address(ctx.network), random_address(ctx.network)
    factory = custody_db(ctx.config)
    pool, height = mempool(ctx.rpc), ctx.rpc.get_block_count()
    operator_seen = len(inbox_texts(ctx.carrier, ctx.operator_number))
    with factory() as s:
        last_id = s.execute(select(func.max(Send.id))).scalar() or 0
    with worker_paused(ctx):
        vtest_id = merchant_withdrawal(ctx, [(payee, ALTERED_SAT)])

        def posted() -> Send | None:
            with factory() as s:
                return s.execute(
                    select(Send).where(Send.account_id == account, Send.id > last_id)
                ).scalar_one_or_none()

        send = wait_for(posted, SEND_TIMEOUT, f"the V-device to post withdrawal {vtest_id}")
        genuine = send.outs
        with factory() as s, s.begin():
            row = s.get(Send, send.id)
            assert row is not None
            row.outs = f"{attacker},{ALTERED_SAT}"
    final = wait_send_final(ctx, send.user_tx_no)
    if final["hot_wallet_tx_status"] != "failed" or final["tx_hash"]:
        raise StepFailed(f"the altered send is {final['hot_wallet_tx_status']}")
    # The V-device signed the merchant's outs; custody now asks for other ones, so its
    # vc_code does not verify over the request: the cold HSM's check 3 (docs/hsm-pair.md).
    reason = expect_frozen_and_alerted(ctx, operator_seen, "vc_code")
    node = expect_no_spend(ctx, pool, height, attacker)
    w = wait_site_finished(ctx, vtest_id)
    if w["status"] != "failed":
        raise StepFailed(f"the site shows withdrawal {vtest_id} as {w['status']}")
    unfreeze(ctx)
    if genuine != f"{payee},{ALTERED_SAT}":
        raise StepFailed(f"the V-device posted outs {genuine!r}, not the merchant's")
    return (
        f"send {send.user_tx_no} signed by the V-device, its outs rewritten in custody's "
        f"database to pay an attacker: the V-device's vc_code does not cover them, so the cold "
        f"HSM refused ({reason[:24]}..), froze account {account}, texted the operator; send "
        f"failed, the site was told; {node}; unfrozen"
    )


def step_attack_forged_vc(ctx: Context) -> str:
    with unfrozen_on_failure(ctx):
        return _attack_forged_vc(ctx)


def step_attack_outputs(ctx: Context) -> str:
    with unfrozen_on_failure(ctx):
        return _attack_outputs(ctx)


def _log_text(ctx: Context, prefix: str) -> str:
    for event in ctx.carrier.sms_log():
        body = event.get("body") or ""
        if event.get("from") == ctx.vdevice_number and body.startswith(prefix):
            return str(body)
    raise StepFailed(f"no {prefix}.. SMS of the V-device in the carrier's log (log_bodies off?)")


def step_attack_sms(ctx: Context) -> str:
    """Spoofed channel requests and replayed SMS reach the cold HSM's SIM."""

    account = ctx.need("account_id")
    ctx.need("c_id")
    control, cold_sim = ctx.carrier, ctx.cold_numbers[0]
    before = cold_view(ctx.config)
    owner_seen = len(inbox_texts(control, ctx.owner_number))

    def qh() -> str:
        chan_pub = secp.pubkey_from_privkey(secrets.token_bytes(32))
        msg = cm.OpenRequest.signed(
            chan_pub, secrets.token_hex(8), int(time.time()), secrets.token_bytes(32)
        )
        return cm.format(msg)

    def refused(reason: str, n: int = 1) -> None:
        name = f"refused.{reason}"
        wait_for(
            lambda: cold_view(ctx.config).counters.get(name, 0) >= before.counters.get(name, 0) + n,
            SMS_TIMEOUT,
            f"the cold HSM to count {name}",
        )

    control.inject_sms(cold_sim, qh(), ATTACKER_NUMBER)
    refused("unknown_sender")
    control.inject_sms(cold_sim, qh(), ctx.vdevice_number)
    refused("bad_identity_signature")
    wait_inbox(control, ctx.owner_number, "refused", owner_seen, SMS_TIMEOUT, "the owner")
    control.inject_sms(cold_sim, _log_text(ctx, "CC:QH:"), ctx.vdevice_number)
    control.inject_sms(cold_sim, _log_text(ctx, "CC:VERIFY_"), ctx.vdevice_number)
    refused("replayed", 2)
    after = cold_view(ctx.config)
    if after.channels != before.channels:
        raise StepFailed("the cold HSM's channels changed")
    for counter in ("opened", "confirmed", "proved"):
        if after.counters.get(counter, 0) != before.counters.get(counter, 0):
            raise StepFailed(f"the cold HSM's {counter} counter moved")
    if account in after.frozen:
        raise StepFailed("the account was frozen by the SMS attacks")
    return (
        f"QH from a spoofed number {ATTACKER_NUMBER}: ignored (unknown sender); QH claiming the "
        "V-device's number, signed by another identity key: refused, owner alerted; the "
        "V-device's old QH and VERIFY replayed from the carrier log: refused as replays; "
        f"channels unchanged ({len(after.channels)}), no proof or channel made"
    )
