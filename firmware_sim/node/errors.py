"""RPC errors with Bitcoin Core's numeric codes, so a client written for bitcoind works here.

Codes are those of Core's `src/rpc/protocol.h`; messages are Core's wording where known.
"""

from __future__ import annotations

from enum import IntEnum

from cc_common.errors import CustodyError


class RPCCode(IntEnum):
    """Bitcoin Core's JSON-RPC error codes (the subset this node returns)."""

    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    PARSE_ERROR = -32700
    MISC_ERROR = -1
    TYPE_ERROR = -3
    INVALID_ADDRESS_OR_KEY = -5
    INVALID_PARAMETER = -8
    DATABASE_ERROR = -20
    DESERIALIZATION_ERROR = -22
    VERIFY_ERROR = -25
    VERIFY_REJECTED = -26
    VERIFY_ALREADY_IN_CHAIN = -27
    IN_WARMUP = -28


class RPCError(Exception):
    """An error returned to the caller as `{"code": ..., "message": ...}`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = int(code)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class NodeStartError(CustodyError):
    """The node cannot start (port taken, unreadable datadir); the CLI exits non-zero."""
