"""Bitcoin Core JSON-RPC client for custody (works against bitcoind or the simulated node)."""

from custody.chain.errors import ChainError, ChainUnavailable, RPCError, TxRejected
from custody.chain.rpc import BitcoinRPC, FeeEstimate, MempoolAcceptResult

__all__ = [
    "BitcoinRPC",
    "ChainError",
    "ChainUnavailable",
    "FeeEstimate",
    "MempoolAcceptResult",
    "RPCError",
    "TxRejected",
]
