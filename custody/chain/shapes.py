"""The shape of the node's decoded blocks and transactions, checked where they enter custody.

The watcher reads fields of `getblock` (verbosity 2 and 3) and `getrawtransaction` (verbose)
results by name: a node answering something else would make it fail on a `KeyError` or
`TypeError` deep inside a database transaction. Here every field it reads is checked once,
with its type and range, and a bad answer becomes `ChainUnavailable` (the node is unusable;
the worker retries later). Fields custody does not read are left alone.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from custody.chain.errors import ChainUnavailable

MAX_BTC = Decimal(21_000_000)
MAX_TIME = 2**32  # block times are uint32


def _bad(method: str, what: str) -> ChainUnavailable:
    return ChainUnavailable(f"node answered {method} with a malformed {what}")


def _int(value: Any, method: str, what: str, low: int = 0, high: int = 2**63) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise _bad(method, what)
    return value


def _hex(value: Any, method: str, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(method, what)
    try:
        bytes.fromhex(value)
    except ValueError:
        raise _bad(method, what) from None
    return value


def _amount(value: Any, method: str) -> None:
    """A BTC amount `btc_to_sats` reads exactly: 0..21e6 with at most 8 decimals."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise _bad(method, "amount")
    if not (0 <= value <= MAX_BTC and (Decimal(value) * 100_000_000) % 1 == 0):
        raise _bad(method, "amount")


def _script(value: Any, method: str) -> None:
    if not isinstance(value, dict):
        raise _bad(method, "scriptPubKey")
    _hex(value.get("hex"), method, "scriptPubKey hex")
    if not isinstance(value.get("address", ""), str):
        raise _bad(method, "address")


def _output(value: Any, method: str) -> None:
    if not isinstance(value, dict):
        raise _bad(method, "output")
    _int(value.get("n"), method, "output index", high=2**32)
    _amount(value.get("value"), method)
    _script(value.get("scriptPubKey"), method)


def _input(value: Any, method: str) -> None:
    if not isinstance(value, dict):
        raise _bad(method, "input")
    if "txid" in value:  # a coinbase input has none
        _hex(value["txid"], method, "input txid")
        _int(value.get("vout"), method, "input vout", high=2**32)
    prevout = value.get("prevout")
    if prevout is not None:  # verbosity 3
        if not isinstance(prevout, dict):
            raise _bad(method, "prevout")
        _amount(prevout.get("value"), method)
        _script(prevout.get("scriptPubKey"), method)


def check_tx(value: Any, method: str = "getrawtransaction") -> dict[str, Any]:
    """A decoded transaction whose every field the watcher reads is well formed."""
    if not isinstance(value, dict):
        raise _bad(method, "transaction")
    _hex(value.get("txid"), method, "txid")
    for key, check in (("vin", _input), ("vout", _output)):
        items = value.get(key, [])
        if not isinstance(items, list):
            raise _bad(method, key)
        for item in items:
            check(item, method)
    if value.get("confirmations") is not None:
        _int(value["confirmations"], method, "confirmations", low=-(2**31))
    return value


def check_block(value: Any, method: str = "getblock") -> dict[str, Any]:
    """A block of verbosity 2 or 3: header fields the watcher reads and every transaction."""
    if not isinstance(value, dict):
        raise _bad(method, "block")
    _int(value.get("height"), method, "height", high=2**31)
    _hex(value.get("hash"), method, "block hash")
    if value.get("time") is not None:
        _int(value["time"], method, "time", high=MAX_TIME)
    if value.get("previousblockhash") is not None:
        _hex(value["previousblockhash"], method, "previous block hash")
    txs = value.get("tx")
    if not isinstance(txs, list):
        raise _bad(method, "transaction list")
    for tx in txs:
        check_tx(tx, method)
    return value
