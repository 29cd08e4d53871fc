"""Shared harness for tests of the simulated node and the chain client.

`NodeProcess` runs the node as a real OS process (`firmware-sim node --dir D`) in a fresh
deployment through the harness's `TestProcess` (readiness by polling with a deadline, fail
fast with its output if it dies, SIGTERM to stop). Transactions are built here with
python-bitcointx and coincurve, never with wallet_core: the node must judge the wallet's output
independently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import coincurve
import pytest
import requests
from bitcointx import segwit_addr
from bitcointx.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    Hash160,
    lx,
)
from bitcointx.core.script import (
    OP_0,
    OP_CHECKMULTISIG,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
)

from cc_common.config import Config
from custody.chain import BitcoinRPC, RPCError, TxRejected
from tests.harness import Deployment, TestProcess

ROOT = Path(__file__).resolve().parent.parent
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
COIN = 100_000_000
FEE = 10_000  # sats: comfortably above 1 sat/vB for the small transactions here


class NodeProcess:
    """The regtest node as a child process (`TestProcess` of the harness) in its own
    deployment directory, with the node's RPC coordinates."""

    def __init__(self, data_dir: Path, *, txindex: bool = False) -> None:
        self.data_dir = data_dir
        self.txindex = txindex  # Core's default is off: mined txs only with their block hash
        self.deployment = Deployment(data_dir.parent, data_dir.name)
        self.deployment.env["CC__FIRMWARE_SIM__NODE__TXINDEX"] = "true" if txindex else "false"
        self.config: Config = self.deployment.config
        section = self.config.section("firmware_sim.node")
        self.url = f"http://{section.str('host')}:{section.int('port')}"
        self.user = section.str("rpc_user")
        self.password = section.str("rpc_password")
        self.datadir = section.path("datadir")
        argv = [sys.executable, "-m", "firmware_sim.cli", "node", "--dir", str(data_dir)]
        self.process = TestProcess(self.deployment, "node", argv, ready_name="node")

    def start(self, deadline: float = 30.0) -> None:
        """Start and wait for the ready file; fails at once, with the output, if it dies."""
        self.process.start().wait_ready(deadline)

    def stop(self, deadline: float = 15.0) -> int:
        """SIGTERM, wait (SIGKILL after `deadline`); the exit status."""
        if self.process.proc is None:
            return 0
        self.process.stop(deadline, check=False)
        return int(self.process.proc.returncode)

    def log(self) -> str:
        return f"{self.process.stderr()[-5000:]}{self.process.stdout()[-5000:]}"

    def rpc(self, **kwargs: Any) -> BitcoinRPC:
        return BitcoinRPC(self.url, self.user, self.password, timeout=30, **kwargs)

    def post(self, body: Any, auth: tuple[str, str] | None = None) -> requests.Response:
        """A raw HTTP POST, for checking the wire format itself."""
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return requests.post(
            self.url, data=data, auth=auth or (self.user, self.password), timeout=30
        )


def running_node(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, txindex: bool = False
) -> Iterator[NodeProcess]:
    """Body of a module-scoped fixture: a started node, stopped (cleanly) at teardown."""
    node = NodeProcess(tmp_path_factory.mktemp(name), txindex=txindex)
    node.start()
    try:
        yield node
    finally:
        code = node.stop()
        assert code == 0, f"node exited with {code}:\n{node.log()}"


def node_rig(
    name: str, *, seed: str, blocks: int = 101, txindex: bool = False
) -> tuple[Any, Any, Any, Any]:
    """A node-test module's fixtures, `node, rpc, key, faucet = node_rig(...)` at module level:
    one node per module (named `name`), its RPC client, the miner's key (from `seed`) and a
    faucet of coins mined to it (`blocks` blocks first, 101 for one mature coin)."""

    @pytest.fixture(scope="module", name="node")
    def node_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
        yield from running_node(tmp_path_factory, name, txindex=txindex)

    @pytest.fixture(scope="module", name="rpc")
    def rpc_fixture(node: NodeProcess) -> BitcoinRPC:
        return node.rpc()

    @pytest.fixture(scope="module", name="key")
    def key_fixture() -> Key:
        return Key.from_seed(seed)

    @pytest.fixture(scope="module", name="faucet")
    def faucet_fixture(rpc: BitcoinRPC, key: Key) -> Faucet:
        rpc.generate_to_address(blocks, key.address)
        return Faucet(rpc, key)

    return node_fixture, rpc_fixture, key_fixture, faucet_fixture


def rejected(rpc: BitcoinRPC, tx_hex: str) -> tuple[int, str]:
    """Core's code and reason when the node refuses `tx_hex`."""
    with pytest.raises(TxRejected) as info:
        rpc.send_raw_transaction(tx_hex)
    return info.value.rpc_code, info.value.reason


def assert_rpc_error(call: Any, code: int, message: str, *args: Any) -> RPCError:
    """Like Core's `assert_raises_rpc_error`: both the code and the exact message."""
    with pytest.raises(RPCError) as info:
        call(*args)
    assert (info.value.rpc_code, info.value.rpc_message) == (code, message)
    return info.value


# ---------------------------------------------------------------- keys and transactions


@dataclass
class Key:
    """A secp256k1 key with its P2WPKH output (coincurve for signing)."""

    priv: coincurve.PrivateKey

    @classmethod
    def from_seed(cls, seed: str) -> Key:
        return cls(coincurve.PrivateKey(hashlib.sha256(seed.encode()).digest()))

    @property
    def pub(self) -> bytes:
        return self.priv.public_key.format(compressed=True)

    @property
    def script(self) -> CScript:
        return CScript([OP_0, Hash160(self.pub)])

    @property
    def address(self) -> str:
        return segwit_addr.encode("bcrt", 0, Hash160(self.pub))

    def sign(self, digest: bytes, *, high_s: bool = False) -> bytes:
        sig = self.priv.sign(digest, hasher=None)
        if high_s:
            sig = to_high_s(sig)
        return sig + bytes([SIGHASH_ALL])


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(32, "big").lstrip(b"\x00") or b"\x00"
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return b"\x02" + bytes([len(raw)]) + raw


def to_high_s(der: bytes) -> bytes:
    """The same signature with s replaced by n - s (valid ECDSA, but not low-S)."""
    rlen = der[3]
    r = int.from_bytes(der[4 : 4 + rlen], "big")
    slen = der[5 + rlen]
    s = int.from_bytes(der[6 + rlen : 6 + rlen + slen], "big")
    body = _der_int(r) + _der_int(SECP256K1_N - s)
    return b"\x30" + bytes([len(body)]) + body


def p2wsh_multisig(keys: list[Key], m: int = 2) -> tuple[CScript, CScript, list[Key]]:
    """(witness script, P2WSH output script, keys in script order) for sortedmulti."""
    ordered = sorted(keys, key=lambda k: k.pub)
    witness_script = CScript([m, *[k.pub for k in ordered], len(ordered), OP_CHECKMULTISIG])
    return witness_script, CScript([OP_0, hashlib.sha256(witness_script).digest()]), ordered


def p2wsh_address(witness_script: CScript) -> str:
    return segwit_addr.encode("bcrt", 0, hashlib.sha256(witness_script).digest())


def unsigned_tx(
    inputs: list[tuple[str, int]],
    outputs: list[tuple[bytes | CScript, int]],
    sequence: int = 0xFFFFFFFF,
) -> CTransaction:
    vin = [CTxIn(COutPoint(lx(txid), n), nSequence=sequence) for txid, n in inputs]
    vout = [CTxOut(value, CScript(script)) for script, value in outputs]
    return CTransaction(vin, vout, nVersion=2)


def with_witness(tx: CTransaction, stacks: list[list[bytes]]) -> CTransaction:
    witness = CTxWitness([CTxInWitness(CScriptWitness(stack)) for stack in stacks])
    return CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion, witness)


def p2wpkh_digest(tx: CTransaction, index: int, key: Key, amount: int) -> bytes:
    code = CScript([OP_DUP, OP_HASH160, Hash160(key.pub), OP_EQUALVERIFY, OP_CHECKSIG])
    return code.sighash(tx, index, SIGHASH_ALL, amount=amount, sigversion=SIGVERSION_WITNESS_V0)


def p2wsh_digest(tx: CTransaction, index: int, witness_script: CScript, amount: int) -> bytes:
    return witness_script.sighash(
        tx, index, SIGHASH_ALL, amount=amount, sigversion=SIGVERSION_WITNESS_V0
    )


def spend_p2wpkh(
    key: Key,
    coin: tuple[str, int, int],
    outputs: list[tuple[bytes | CScript, int]],
    *,
    high_s: bool = False,
    sequence: int = 0xFFFFFFFF,
) -> CTransaction:
    """Spend one P2WPKH coin (txid, vout, value) to `outputs`, signed by `key`."""
    txid, vout, value = coin
    tx = unsigned_tx([(txid, vout)], outputs, sequence)
    sig = key.sign(p2wpkh_digest(tx, 0, key, value), high_s=high_s)
    return with_witness(tx, [[sig, key.pub]])


def hex_of(tx: CTransaction) -> str:
    return tx.serialize().hex()


def txid_hex(tx: CTransaction) -> str:
    return tx.GetTxid()[::-1].hex()


class Faucet:
    """Hands out distinct mature coinbase coins paid to `key` (mining more when needed)."""

    def __init__(self, rpc: BitcoinRPC, key: Key) -> None:
        self.rpc = rpc
        self.key = key
        self.next_height = 1

    def coin(self) -> tuple[str, int, int]:
        """(txid, vout, value in sats) of a coinbase output spendable in the next block."""
        while self.rpc.get_block_count() + 1 - self.next_height < 100:
            self.rpc.generate_to_address(10, self.key.address)
        block = self.rpc.get_block(self.rpc.get_block_hash(self.next_height), 2)
        self.next_height += 1
        coinbase = block["tx"][0]
        value = Decimal(coinbase["vout"][0]["value"])
        return coinbase["txid"], 0, int(value * COIN)

    def immature_coin(self) -> tuple[tuple[str, int, int], int]:
        """A coinbase one block short of maturity, and the depth Core will report."""
        tip = self.rpc.get_block_count()
        height = tip - 98  # spent in block tip+1 at depth 99
        block = self.rpc.get_block(self.rpc.get_block_hash(height), 2)
        coinbase = block["tx"][0]
        return (coinbase["txid"], 0, int(Decimal(coinbase["vout"][0]["value"]) * COIN)), 99
