"""The simulated regtest Bitcoin node (Bitcoin Core JSON-RPC). Shares no code with wallet_core."""
