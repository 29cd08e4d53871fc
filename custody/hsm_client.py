"""Client of the hot HSM's local RPC (see docs/hsm-pair.md): the only way custody reaches keys.

Loopback HTTP with a shared secret, over the standard library's `http.client`: one kept-alive
connection per calling thread, the JSON body encoded once and sent with its headers in one
write (a co-sign's client CPU is mostly HTTP machinery; `requests` cost twice as much).
Errors from the HSMs keep their numeric code and message (`HsmRefused`); a hot HSM that does
not answer becomes the API's `HsmUnavailableError` (HTTP 503, code 13), which views let
through as it is. `HotHsm` is what custody needs of the client, so tests may hand in a
stand-in with the same methods.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

from cc_common.config import Config
from cc_common.errors import CustodyError
from cc_common.hops import DEADLINE_HEADER, timed, within_caller
from custody.errors import HsmUnavailableError

log = logging.getLogger(__name__)


class HsmError(CustodyError):
    """Root of the answers of the HSMs that are not a result."""

    code = 600


class HsmRefused(HsmError):
    """An HSM refused the request; `code` and `message` are the HSM's own."""


@dataclass(frozen=True)
class ProvisionedAccount:
    """Public material of a freshly provisioned account, as the HSMs returned it."""

    receiving_xpub: str
    cosigner_xpub: str
    cosigner_fingerprint: str
    recovery_xpub: str
    recovery_fingerprint: str
    hot_pubkey: str
    cold_identity: str
    proof: str
    # the cold receiving account's master fingerprint (the key origin of the cold descriptor);
    # None from a hot HSM that does not relay it
    receiving_fingerprint: str | None = None


PROVISIONED_FIELDS = tuple(
    f for f in ProvisionedAccount.__dataclass_fields__ if f != "receiving_fingerprint"
)


def _answer_field(method: str, result: Any, key: str, kind: type = str) -> Any:
    """`result[key]` of the type the hot HSM's contract gives it, else `HsmUnavailableError`: a
    hot HSM that answers nonsense is treated as one that does not answer."""
    value = result.get(key) if isinstance(result, dict) else None
    if not isinstance(value, kind):
        raise HsmUnavailableError(f"hot HSM answered {method} without a valid {key!r}")
    return value


class HotHsm(Protocol):
    """The hot HSM as custody uses it (the RPC client, or a stand-in in tests)."""

    def health(self) -> dict[str, Any]: ...

    def provision_account(
        self,
        account: int,
        network: str,
        vdevice_identity: str,
        settlement_descriptor: str,
        *,
        vdevice_phone: str,
        owner_phone: str,
    ) -> ProvisionedAccount: ...

    def prove_batch(self, account: int, wallet: str, batch_no: int) -> str: ...

    def sign_send(
        self, account: int, psbt: str, request: dict[str, Any], vc_code: str, c_id: str
    ) -> str: ...

    def sign_batch(self, account: int, psbt: str, members: list[dict[str, Any]]) -> str: ...

    def freeze(self, account: int, reason: str) -> None: ...


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server (readable means EOF or
    stray bytes; either way it cannot carry the next call)."""
    sock = conn.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class HotHsmClient:
    """The hot HSM's RPC over loopback HTTP with a bearer secret."""

    # the connection type (tests give one whose socket is scripted)
    connection_class: type[http.client.HTTPConnection] = http.client.HTTPConnection

    def __init__(self, url: str, secret: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/rpc"
        split = urllib.parse.urlsplit(self.url)
        if split.scheme != "http" or not split.hostname:
            raise ValueError(f"the hot HSM's RPC is plain http://host:port, not {url!r}")
        # Straight to the configured address: no proxy or ~/.netrc from the environment may
        # see a call that carries the RPC secret (http.client reads neither).
        self._address = (split.hostname, split.port or 80)
        self._path = split.path
        self._auth = f"Bearer {secret}"
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def from_config(
        cls, config: Config, *, timeout_key: str = "rpc_timeout", default: float = 60.0
    ) -> HotHsmClient:
        """`[hsm_hot] rpc_timeout` (the worker's; API requests use `api_hsm_timeout`)."""
        s = config.section("hsm_hot")
        return cls(
            f"http://{s.str('rpc_host')}:{s.int('rpc_port')}",
            s.secret("rpc_secret"),
            timeout=s.float(timeout_key, default),
        )

    def call(self, method: str, **params: Any) -> Any:
        timeout = within_caller(self.timeout)
        with timed(log, "custody->hot", method, timeout, answers=(HsmRefused,)):
            return self._call(method, params, timeout)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        """This thread's connection, reconnected if the server closed it while idle."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connection_class(*self._address, timeout=timeout)
        elif _dropped(conn):
            conn.close()
        conn.timeout = timeout  # for a (re)connect
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _exchange(self, method: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """POST `body`; (HTTP status, response body), or `HsmUnavailableError`."""
        headers = {
            "Authorization": self._auth,
            "Content-Type": "application/json",
            DEADLINE_HEADER: f"{timeout:.2f}",
        }
        conn = self._connection(timeout)
        try:
            conn.request("POST", self._path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            conn.close()
            raise HsmUnavailableError(
                f"hot HSM did not answer {method} within {timeout:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise HsmUnavailableError(f"hot HSM unreachable ({type(exc).__name__})") from None
        if resp.will_close:
            conn.close()
        return resp.status, data

    def _call(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        body = json.dumps({"method": method, "params": params}, allow_nan=False).encode()
        status, data = self._exchange(method, body, timeout)
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise HsmUnavailableError(f"hot HSM answered HTTP {status} without JSON") from None
        if not isinstance(answer, dict):
            raise HsmUnavailableError(f"hot HSM answered {method} with a malformed reply")
        if answer.get("error"):
            err = answer["error"]
            code = err.get("code", 600) if isinstance(err, dict) else None
            if isinstance(code, bool) or not isinstance(code, int):
                raise HsmUnavailableError(f"hot HSM answered {method} with a malformed error")
            raise HsmRefused(str(err.get("message", "refused")), code=code)
        return answer.get("result")

    # -- the methods of docs/hsm-pair.md ---------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.call("health")

    def provision_account(
        self,
        account: int,
        network: str,
        vdevice_identity: str,
        settlement_descriptor: str,
        *,
        vdevice_phone: str,
        owner_phone: str,
    ) -> ProvisionedAccount:
        """Provision on both HSMs; the cold one pins the phones for the SMS channel."""
        r = self.call(
            "provision_account",
            account=account,
            network=network,
            vdevice_identity=vdevice_identity,
            settlement_descriptor=settlement_descriptor,
            vdevice_phone=vdevice_phone,
            owner_phone=owner_phone,
        )
        method = "provision_account"
        fields = {k: _answer_field(method, r, k) for k in PROVISIONED_FIELDS}
        fingerprint = r.get("receiving_fingerprint")  # r is a dict: checked just above
        return ProvisionedAccount(
            **fields, receiving_fingerprint=fingerprint if isinstance(fingerprint, str) else None
        )

    def prove_batch(self, account: int, wallet: str, batch_no: int) -> str:
        r = self.call("prove_batch", account=account, wallet=wallet, batch_no=batch_no)
        return str(_answer_field("prove_batch", r, "signature"))

    def register_channel(
        self, account: int, c_id: str, channel_pubkey: str, expires_at: int, identity_sig: str
    ) -> None:
        self.call(
            "register_channel",
            account=account,
            c_id=c_id,
            channel_pubkey=channel_pubkey,
            expires_at=expires_at,
            identity_sig=identity_sig,
        )

    def channel_key(self, account: int, c_id: str) -> dict[str, Any]:
        """`{channel_pubkey, expires_at, signature}`: the cold HSM's signed statement of the
        V-device key of live channel `c_id` (`custody.vc_check` verifies it)."""
        return self._object("channel_key", self.call("channel_key", account=account, c_id=c_id))

    def send_statement(self, account: int, user_tx_no: str) -> dict[str, Any]:
        """The cold HSM's signed final word on `user_tx_no`: `{state: "signed", txid,
        signature}`, or `{state: "refused", code, signature}`, which also closes it for good."""
        result = self.call("send_statement", account=account, user_tx_no=user_tx_no)
        return self._object("send_statement", result)

    @staticmethod
    def _object(method: str, result: Any) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise HsmUnavailableError(f"hot HSM answered {method} with a malformed reply")
        return result

    def sign_send(
        self, account: int, psbt: str, request: dict[str, Any], vc_code: str, c_id: str
    ) -> str:
        """Both HSMs' signatures on `psbt` (base64); returns the PSBT with both partial sigs."""
        r = self.call(
            "sign_send", account=account, psbt=psbt, request=request, vc_code=vc_code, c_id=c_id
        )
        return str(_answer_field("sign_send", r, "psbt"))

    def sign_batch(self, account: int, psbt: str, members: list[dict[str, Any]]) -> str:
        """Both HSMs' signatures on a batched payout: `members` are each send's
        `{request, vc_code, c_id}`, in the order the PSBT pays them."""
        r = self.call("sign_batch", account=account, psbt=psbt, members=members)
        return str(_answer_field("sign_batch", r, "psbt"))

    def sign_consolidation(self, account: int, psbt: str) -> str:
        """Both HSMs' signatures on a consolidation (every output the account's own change)."""
        return str(self.call("sign_consolidation", account=account, psbt=psbt)["psbt"])

    def freeze(self, account: int, reason: str) -> None:
        self.call("freeze", account=account, reason=reason)

    def account_states(self, accounts: list[int] | None = None) -> list[dict[str, Any]]:
        """The cold HSM's signed account states (verify them: `custody.freezes`)."""
        params = {} if accounts is None else {"accounts": accounts}
        return list(self.call("account_states", **params)["states"])

    def unfreeze(self, account: int, reason: str) -> list[dict[str, Any]]:
        return list(self.call("unfreeze", account=account, reason=reason)["states"])

    def cold_status(self) -> dict[str, Any]:
        return self.call("cold_status")

    def take_alerts(self) -> list[dict[str, Any]]:
        return list(_answer_field("take_alerts", self.call("take_alerts"), "alerts", list))
