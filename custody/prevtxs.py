"""The funding transactions of a send's inputs, for the cold HSM's amount check.

A segwit signature commits only to its own input's amount, so the cold HSM signs an input only
once it has verified the amount itself: from the transaction that created the output,
hash-checked against its txid, or from its own records (outputs of sends it signed). So custody
attaches the funding transaction of every input that is not the output of one of its own sends
(deposits to the hot wallet) to the PSBT; if the cold HSM still asks (refusal code
`PREV_TX_REQUIRED`: a send it never signed), custody attaches every input's and asks again.
The node needs no txindex: a mined transaction is fetched from the block custody recorded it
in, an unconfirmed one from the mempool.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.chain.errors import ChainUnavailable, RPCError
from custody.chain.rpc import BitcoinRPC
from custody.models import ChainTx, Send
from wallet_core.errors import PsbtError
from wallet_core.psbt import Psbt
from wallet_core.rawtx import parse_unsigned_tx

log = logging.getLogger(__name__)

PREV_TX_REQUIRED = 730  # hsm_cold.errors.ColdErrorCode.PREV_TX_REQUIRED, relayed unchanged


class PrevTxUnavailable(Exception):
    """A funding transaction could not be fetched from the node (or does not fit)."""


def fetch_prev_tx(factory: sessionmaker[Session], rpc: BitcoinRPC, txid: str) -> bytes:
    """The raw transaction `txid`: from its recorded block if mined, else from the mempool."""
    with factory() as s:
        block_hash = s.execute(
            select(ChainTx.block_hash)
            .where(ChainTx.txid == txid, ChainTx.block_hash.is_not(None))
            .limit(1)
        ).scalar()
    try:
        raw = rpc.get_raw_transaction(txid, False, block_hash)
    except (RPCError, ChainUnavailable) as exc:
        raise PrevTxUnavailable(f"transaction {txid}: {exc}") from None
    try:
        return bytes.fromhex(str(raw))
    except ValueError:
        raise PrevTxUnavailable(f"transaction {txid}: the node answered no hex") from None


def with_prev_txs(
    factory: sessionmaker[Session], rpc: BitcoinRPC, psbt_b64: str, *, all_inputs: bool = True
) -> str:
    """`psbt_b64` with funding transactions attached (PSBT_IN_NON_WITNESS_UTXO): of every
    input, or (`all_inputs=False`) of those not spending an output of one of custody's sends,
    which the cold HSM knows from signing them."""
    psbt = Psbt.from_base64(psbt_b64)
    txids = _input_txids(psbt.unsigned_tx_bytes())
    own = set() if all_inputs else _own_send_txids(factory, txids)
    fetched: dict[str, bytes] = {}
    for i, txid in enumerate(txids):
        if psbt.input_prev_tx(i) is not None or txid in own:
            continue
        if txid not in fetched:
            fetched[txid] = fetch_prev_tx(factory, rpc, txid)
        try:
            psbt.set_prev_tx(i, fetched[txid])
        except PsbtError as exc:
            raise PrevTxUnavailable(exc.message) from None
    if fetched:
        log.info("attached %d funding transaction(s) for the cold HSM", len(fetched))
    return psbt.to_base64()


def _own_send_txids(factory: sessionmaker[Session], txids: list[str]) -> set[str]:
    with factory() as s:
        rows = s.execute(select(Send.txid).where(Send.txid.in_(set(txids)))).scalars()
        return {str(t) for t in rows}


def _input_txids(raw_tx: bytes) -> list[str]:
    return [vin.txid.hex() for vin in parse_unsigned_tx(raw_tx).vin]
