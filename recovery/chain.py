"""Any Bitcoin Core JSON-RPC node: `scantxoutset` over the wallet's chains, `getblockcount`."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from recovery.wallet import RecoveryError, WalletBranch

SAT = Decimal(100_000_000)


class CoreRpc:
    def __init__(self, url: str, user: str = "", password: str = "", timeout: float = 300.0):
        if not url.startswith(("http://", "https://")):
            raise RecoveryError(f"--rpc {url!r}: an http:// or https:// URL is needed")
        self.url = url
        self.timeout = timeout
        self._auth = base64.b64encode(f"{user}:{password}".encode()).decode() if user else ""

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "1.0", "id": "cc-recover", "method": method, "params": list(params)}
        ).encode()
        req = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self.url, body, {"Content-Type": "application/json"}
        )
        if self._auth:
            req.add_header("Authorization", f"Basic {self._auth}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                doc = json.loads(resp.read(), parse_float=Decimal)
        except urllib.error.HTTPError as exc:
            try:
                doc = json.loads(exc.read(), parse_float=Decimal)
            except ValueError:
                raise RecoveryError(f"node: HTTP {exc.code} for {method}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RecoveryError(f"node at {self.url}: {exc}") from None
        if doc.get("error"):
            err = doc["error"]
            raise RecoveryError(f"node refused {method}: {err.get('message')} ({err.get('code')})")
        return doc["result"]


@dataclass(frozen=True)
class FoundUtxo:
    txid: str
    vout: int
    amount_sat: int
    height: int
    branch: WalletBranch
    index: int
    prev_tx: bytes  # the funding transaction: signers verify the amount from it


def scan(rpc: CoreRpc, branches: list[WalletBranch], last_index: int) -> list[FoundUtxo]:
    """Every UTXO of `branches` at indexes 0..last_index, matched back to its index here."""
    objects = [{"desc": b.text, "range": [0, last_index]} for b in branches]
    result = rpc.call("scantxoutset", "start", objects)
    if not result.get("success"):
        raise RecoveryError("the node's scantxoutset did not finish")
    wanted: dict[bytes, tuple[WalletBranch, int]] = {}
    for b in branches:
        for i in range(last_index + 1):
            wanted[b.script_at(i)] = (b, i)
    found = []
    for u in result.get("unspents", []):
        script = bytes.fromhex(u["scriptPubKey"])
        if script not in wanted:
            raise RecoveryError(f"the node returned {u['txid']}:{u['vout']}, not ours")
        branch, index = wanted[script]
        amount = int(Decimal(str(u["amount"])) * SAT)
        height = int(u["height"])
        prev = _prev_tx(rpc, u["txid"], height)
        found.append(FoundUtxo(u["txid"], int(u["vout"]), amount, height, branch, index, prev))
    return sorted(found, key=lambda f: (f.branch.name, f.index, f.txid, f.vout))


def _prev_tx(rpc: CoreRpc, txid: str, height: int) -> bytes:
    """A confirmed transaction by its block (works on a node without `-txindex`)."""
    block = rpc.call("getblockhash", height)
    raw = rpc.call("getrawtransaction", txid, False, block)
    try:
        return bytes.fromhex(raw)
    except (TypeError, ValueError):
        raise RecoveryError(f"the node returned no transaction for {txid}") from None
