"""A Bitcoin Core JSON-RPC 1.0 client with timeouts and bounded retries.

Only connection failures (refused, reset, timed out before a reply) are retried, with
exponential backoff: a call the node has answered, even with an error, is never repeated, so a
`sendrawtransaction` is not sent twice because of us. Uses only RPCs and fields that Bitcoin
Core has, so it works unchanged against a real `bitcoind`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from cc_common.config import Config
from cc_common.hops import timed
from custody.chain import shapes
from custody.chain.errors import (
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    AuthenticationFailed,
    ChainUnavailable,
    RPCError,
    TxRejected,
)

log = logging.getLogger(__name__)

COIN = 100_000_000
_TX_REJECT_CODES = {RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED, RPC_VERIFY_ALREADY_IN_CHAIN}


def btc_to_sats(value: Decimal | int | str) -> int:
    """Exact BTC -> satoshis (amounts are parsed as Decimal, never float)."""
    sats = Decimal(value) * COIN
    if sats != sats.to_integral_value():
        raise ValueError(f"amount {value} has more than 8 decimals")
    return int(sats)


def _expect(method: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value` if it has the type Core documents for `method`'s result, else `ChainUnavailable`
    (a node that answers nonsense is as unusable as one that does not answer)."""
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise ChainUnavailable(f"node answered {method} with a malformed result")
    return value


def _to_json(value: Any) -> Any:
    """Decimal amounts go as strings, which Core's `AmountFromValue` accepts exactly."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


@dataclass(frozen=True)
class FeeEstimate:
    """`estimatesmartfee`: `feerate` in BTC/kvB, or None when the node has no estimate."""

    feerate: Decimal | None
    blocks: int
    errors: tuple[str, ...] = ()

    @property
    def sat_per_vbyte(self) -> Decimal | None:
        return None if self.feerate is None else self.feerate * COIN / 1000


@dataclass(frozen=True)
class MempoolAcceptResult:
    """One entry of `testmempoolaccept`."""

    txid: str
    wtxid: str
    allowed: bool | None
    reject_reason: str | None = None
    vsize: int | None = None
    fee: Decimal | None = None


class BitcoinRPC:
    """Talks to bitcoind (or the simulated node) at `url` with Basic auth or a cookie file."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        cookie_file: Path | str | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not user and cookie_file is None:
            raise ValueError("give rpc user/password or a cookie file")
        self.url = url
        self._user = user
        self._password = password
        self._cookie_file = Path(cookie_file) if cookie_file is not None else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._ids = itertools.count(1)
        self._session = requests.Session()

    @classmethod
    def from_config(cls, config: Config) -> BitcoinRPC:
        """Read `[node]`: rpc_url, rpc_user/rpc_password or cookie_file, timeout."""
        section = config.section("node")
        cookie = section.path("cookie_file") if section.has("cookie_file") else None
        return cls(
            section.str("rpc_url"),
            section.str("rpc_user") if section.has("rpc_user") else None,
            section.secret("rpc_password") if section.has("rpc_password") else None,
            timeout=section.float("timeout", default=30.0),
            cookie_file=cookie,
        )

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:  # never shows the password
        return f"BitcoinRPC({self.url!r})"

    # ------------------------------------------------------------------ transport

    def _auth(self) -> tuple[str, str]:
        if self._user:
            return self._user, self._password or ""
        assert self._cookie_file is not None
        try:
            text = self._cookie_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ChainUnavailable(f"cannot read rpc cookie {self._cookie_file}: {exc}") from None
        user, _, password = text.partition(":")
        return user, password

    def call(self, method: str, *params: Any) -> Any:
        """Call `method`; return its result or raise `RPCError`/`TxRejected`/`ChainUnavailable`."""
        with timed(log, "worker->node", method, self.timeout, answers=(RPCError,)):
            return self._call(method, *params)

    def call_many(self, method: str, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Several calls of `method` in one HTTP request (a JSON-RPC batch, as Core accepts);
        their results in order. An error in any raises as `call` would."""
        if not calls:
            return []
        with timed(log, "worker->node", method, self.timeout, answers=(RPCError,)):
            payload = [self._payload(method, params) for params in calls]
            response = self._post(method, payload)
            if response.status_code == 401:
                raise AuthenticationFailed("node refused the rpc credentials (HTTP 401)")
            try:
                body = response.json(parse_float=Decimal)
            except (ValueError, RecursionError):
                raise ChainUnavailable(f"node answered a {method} batch with no JSON") from None
            if not isinstance(body, list) or len(body) != len(payload):
                raise ChainUnavailable(f"node answered a {method} batch with a malformed reply")
            by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
            out = []
            for sent in payload:
                item = by_id.get(sent["id"])
                if item is None:
                    raise ChainUnavailable(f"node answered a {method} batch without an answer")
                out.append(self._answer(method, item, 200))
            return out

    def _payload(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "jsonrpc": "1.0",
            "id": next(self._ids),
            "method": method,
            "params": [_to_json(p) for p in params],
        }

    def _call(self, method: str, *params: Any) -> Any:
        return self._result(method, self._post(method, self._payload(method, params)))

    def _post(self, method: str, payload: Any) -> requests.Response:
        """POST with bounded retries of connection failures only (see the module doc)."""
        attempt = 0
        while True:
            try:
                response = self._session.post(
                    self.url,
                    data=json.dumps(payload),
                    headers={"Content-Type": "application/json"},
                    auth=self._auth(),
                    timeout=self.timeout,
                )
                break
            except (requests.ConnectionError, requests.Timeout) as exc:
                if isinstance(exc, requests.ReadTimeout):
                    # The node may have acted on the call: do not repeat it.
                    raise ChainUnavailable(f"node timed out on {method}") from None
                if attempt >= self.retries:
                    raise ChainUnavailable(
                        f"node unreachable at {self.url} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}"
                    ) from None
                delay = self.backoff * (2**attempt)
                log.warning("node unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
                self._sleep(delay)
                attempt += 1
            except requests.RequestException as exc:
                raise ChainUnavailable(f"node request failed: {type(exc).__name__}") from None
        return response

    @classmethod
    def _result(cls, method: str, response: requests.Response) -> Any:
        if response.status_code == 401:
            raise AuthenticationFailed("node refused the rpc credentials (HTTP 401)")
        try:
            body = response.json(parse_float=Decimal)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise ChainUnavailable(
                f"node answered {method} with HTTP {response.status_code} and no JSON"
            ) from None
        if not isinstance(body, dict):
            raise ChainUnavailable(f"node answered {method} with a malformed reply")
        return cls._answer(method, body, response.status_code)

    @staticmethod
    def _answer(method: str, body: dict[str, Any], status: int) -> Any:
        """The result of one reply object, or the error it carries raised."""
        error = body.get("error")
        if error:
            code = error.get("code", 0) if isinstance(error, dict) else None
            if isinstance(code, bool) or not isinstance(code, int):
                raise ChainUnavailable(f"node answered {method} with a malformed error")
            message = str(error.get("message", ""))
            if code in _TX_REJECT_CODES and method in ("sendrawtransaction", "generateblock"):
                raise TxRejected(code, message)
            raise RPCError(code, message)
        if status != 200:
            raise ChainUnavailable(f"node answered {method} with HTTP {status}")
        return body.get("result")

    # ------------------------------------------------------------------ typed helpers

    def get_block_count(self) -> int:
        return int(_expect("getblockcount", self.call("getblockcount"), int))

    def get_best_block_hash(self) -> str:
        return str(_expect("getbestblockhash", self.call("getbestblockhash"), str))

    def get_block_hash(self, height: int) -> str:
        return str(_expect("getblockhash", self.call("getblockhash", height), str))

    def get_block_hashes(self, first: int, count: int) -> list[str]:
        """The hashes of `count` blocks from height `first` up, in one request (`RPCError`
        -8 if the chain is shorter)."""
        calls = [(h,) for h in range(first, first + count)]
        return [str(_expect("getblockhash", h, str)) for h in self.call_many("getblockhash", calls)]

    def get_block_header(self, block_hash: str) -> dict[str, Any]:
        return dict(_expect("getblockheader", self.call("getblockheader", block_hash, True), dict))

    def get_block(self, block_hash: str, verbosity: int = 1) -> Any:
        """Verbosity 0: hex; 1: header and txids; 2: decoded transactions (3: with prevouts)."""
        result = self.call("getblock", block_hash, verbosity)
        if verbosity >= 2:
            return shapes.check_block(result)
        return _expect("getblock", result, dict if verbosity == 1 else str)

    def get_blockchain_info(self) -> dict[str, Any]:
        return dict(_expect("getblockchaininfo", self.call("getblockchaininfo"), dict))

    def get_raw_transaction(
        self, txid: str, verbose: bool | int = True, block_hash: str | None = None
    ) -> Any:
        """`verbose` 2 adds each input's prevout and the fee (Core 25+; older nodes answer
        as for 1, without them)."""
        params: list[Any] = [txid, verbose]
        if block_hash is not None:
            params.append(block_hash)
        result = self.call("getrawtransaction", *params)
        if verbose:
            return shapes.check_tx(result)
        return _expect("getrawtransaction", result, str)

    def get_raw_transactions(self, txids: list[str], verbose: int, block_hash: str) -> list[Any]:
        """`getrawtransaction` (decoded, `verbose` 1 or 2) of several transactions of one block,
        in one request."""
        calls = [(txid, verbose, block_hash) for txid in txids]
        return [shapes.check_tx(r) for r in self.call_many("getrawtransaction", calls)]

    def get_raw_transactions_of(self, txs: list[tuple[str, str]], verbose: int) -> list[Any]:
        """`getrawtransaction` (decoded) of (txid, block hash) pairs from several blocks, in
        one request."""
        calls = [(txid, verbose, block_hash) for txid, block_hash in txs]
        return [shapes.check_tx(r) for r in self.call_many("getrawtransaction", calls)]

    def decode_raw_transaction(self, tx_hex: str) -> dict[str, Any]:
        return dict(
            _expect("decoderawtransaction", self.call("decoderawtransaction", tx_hex), dict)
        )

    def send_raw_transaction(self, tx_hex: str, max_fee_rate: Decimal | None = None) -> str:
        """Broadcast; `max_fee_rate` in BTC/kvB (Core's default 0.10 if None)."""
        params = (tx_hex,) if max_fee_rate is None else (tx_hex, max_fee_rate)
        return str(_expect("sendrawtransaction", self.call("sendrawtransaction", *params), str))

    def test_mempool_accept(
        self, tx_hexes: list[str], max_fee_rate: Decimal | None = None
    ) -> list[MempoolAcceptResult]:
        params: list[Any] = [tx_hexes]
        if max_fee_rate is not None:
            params.append(max_fee_rate)
        out = []
        for answer in _expect("testmempoolaccept", self.call("testmempoolaccept", *params), list):
            item = _expect("testmempoolaccept", answer, dict)
            fees = _expect("testmempoolaccept", item.get("fees") or {}, dict)
            out.append(
                MempoolAcceptResult(
                    txid=_expect("testmempoolaccept", item.get("txid"), str),
                    wtxid=item.get("wtxid", ""),
                    allowed=item.get("allowed"),
                    reject_reason=item.get("reject-reason"),
                    vsize=item.get("vsize"),
                    fee=fees.get("base"),
                )
            )
        return out

    def get_raw_mempool(self, verbose: bool = False) -> Any:
        result = _expect(
            "getrawmempool", self.call("getrawmempool", verbose), dict if verbose else list
        )
        if not verbose:
            for txid in result:
                _expect("getrawmempool", txid, str)
        return result

    def get_mempool_entry(self, txid: str) -> dict[str, Any]:
        return dict(_expect("getmempoolentry", self.call("getmempoolentry", txid), dict))

    def get_tx_out(
        self, txid: str, vout: int, include_mempool: bool = True
    ) -> dict[str, Any] | None:
        result = self.call("gettxout", txid, vout, include_mempool)
        return None if result is None else dict(_expect("gettxout", result, dict))

    def estimate_smart_fee(self, conf_target: int, mode: str = "conservative") -> FeeEstimate:
        method = "estimatesmartfee"
        result = _expect(method, self.call(method, conf_target, mode), dict)
        rate = result.get("feerate")
        return FeeEstimate(
            feerate=None if rate is None else Decimal(_expect(method, rate, (Decimal, int))),
            blocks=_expect(method, result.get("blocks", 0), int),
            errors=tuple(_expect(method, result.get("errors", []), list)),
        )

    def generate_to_address(self, count: int, address: str) -> list[str]:
        """Regtest only (Core has it too): mine `count` blocks paying `address`."""
        return list(
            _expect("generatetoaddress", self.call("generatetoaddress", count, address), list)
        )
