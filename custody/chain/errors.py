"""Errors of the chain client. `requests` exceptions never leave `custody.chain`."""

from __future__ import annotations

from cc_common.errors import CustodyError

# Bitcoin Core RPC error codes custody reacts to (src/rpc/protocol.h).
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_METHOD_NOT_FOUND = -32601


class ChainError(CustodyError):
    """Base of every error talking to the Bitcoin node."""

    code = 350


class ChainUnavailable(ChainError):
    """The node could not be reached (refused, timed out, bad HTTP) after bounded retries."""

    code = 351


class RPCError(ChainError):
    """The node answered with a JSON-RPC error; `rpc_code` is Core's code."""

    code = 352

    def __init__(self, rpc_code: int, message: str) -> None:
        super().__init__(f"node rpc error {rpc_code}: {message}")
        self.rpc_code = rpc_code
        self.rpc_message = message


class TxRejected(RPCError):
    """A transaction was refused (-25/-26/-27); `reason` is Core's reject reason."""

    code = 353

    @property
    def reason(self) -> str:
        return self.rpc_message

    @property
    def already_in_chain(self) -> bool:
        return self.rpc_code == RPC_VERIFY_ALREADY_IN_CHAIN


class AuthenticationFailed(ChainUnavailable):
    """HTTP 401: wrong rpc user/password or stale cookie. Not retried."""

    code = 354
