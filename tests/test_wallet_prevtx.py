"""Previous transactions: the txid is computed, never taken on trust; PSBTs carry them."""

from __future__ import annotations

import pytest
from embit.transaction import Transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hsm_fixtures import funding_tx
from wallet_core.errors import PsbtError, TxParseError
from wallet_core.prevtx import parse_prev_tx
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput

SCRIPT = bytes([0x00, 0x14]) + bytes(range(20))


@pytest.mark.parametrize("witness", [False, True], ids=["legacy", "segwit"])
def test_txid_and_outputs_match_embit(witness: bool) -> None:
    raw = funding_tx(SCRIPT, 12_345, 2, "a", witness=witness)
    prev = parse_prev_tx(raw)
    assert prev.txid == Transaction.parse(raw).txid().hex()
    assert [o.value for o in prev.vout] == [1000, 1001, 12_345]
    assert prev.vout[2].script_pubkey == SCRIPT


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r + b"\0", "trailing bytes"),
        (lambda r: r[:-5], "truncated"),
        (lambda r: r[:4] + b"\0" + r[5:], "inputs|witness flag"),  # zero inputs: a marker
        (lambda r: b"x" * 400_001, "more than"),
    ],
    ids=["trailing", "truncated", "no-inputs", "too-big"],
)
def test_malformed_previous_transactions_are_refused(mutate, words: str) -> None:
    with pytest.raises(TxParseError, match=words):
        parse_prev_tx(mutate(funding_tx(SCRIPT, 5, 0, "b")))


def test_psbt_carries_a_checked_funding_transaction() -> None:
    raw = funding_tx(SCRIPT, 50_000, 1, "c", witness=True)
    prev = parse_prev_tx(raw)
    psbt = Psbt.create(
        [PsbtInput(prev.txid, 1, 50_000, SCRIPT, prev_tx=raw)], [PsbtOutput(SCRIPT, 40_000)]
    )
    again = Psbt.from_base64(psbt.to_base64())
    assert again.input_prev_tx(0) == raw
    other = funding_tx(SCRIPT, 50_000, 1, "d")
    with pytest.raises(PsbtError, match="not its own"):
        again.set_prev_tx(0, other)
    lying = Psbt.create([PsbtInput(prev.txid, 1, 1, SCRIPT)], [PsbtOutput(SCRIPT, 0)])
    with pytest.raises(PsbtError, match="witness UTXO differs"):
        lying.set_prev_tx(0, raw)
    with pytest.raises(PsbtError, match="no output 5"):
        Psbt.create([PsbtInput(prev.txid, 5, 1, SCRIPT)], [PsbtOutput(SCRIPT, 0)]).set_prev_tx(
            0, raw
        )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=600), st.binary(max_size=8))
def test_only_tx_parse_errors_come_out(noise: bytes, cut: int, insert: bytes) -> None:
    """Random bytes and damaged real transactions: a PrevTx or a TxParseError, nothing else."""
    real = funding_tx(SCRIPT, 77, 1, "fuzz", witness=True)
    for raw in (noise, real[:cut] + insert + real[cut:], real[:cut]):
        try:
            prev = parse_prev_tx(raw)
        except TxParseError:
            continue
        assert len(prev.txid) == 64
