"""Coin selection properties (hypothesis) and fee-rate handling."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wallet_core.coinselect import Utxo, select_coins
from wallet_core.errors import FeeEstimateError, InsufficientFundsError, TooManyInputsError
from wallet_core.fees import (
    P2WPKH_INPUT_WEIGHT,
    P2WSH_2OF3_INPUT_WEIGHT,
    TX_OVERHEAD_WEIGHT,
    estimate_vsize,
    fee_for,
    feerate_from_estimate,
    output_weight_for,
    vsize,
)
from wallet_core.script import ScriptType

PAY_W = output_weight_for(ScriptType.P2WPKH)
DUST = 330


def _utxos(values: list[int]) -> list[Utxo]:
    return [Utxo(f"{n:064x}", n % 3, v) for n, v in enumerate(values)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.integers(min_value=1, max_value=5_000_000), min_size=1, max_size=40),
    amount=st.integers(min_value=1, max_value=20_000_000),
    rate=st.sampled_from([1.0, 2.5, 10.0, 57.3, 200.0]),
    max_inputs=st.integers(min_value=1, max_value=12),
)
def test_selection_properties(values: list[int], amount: int, rate: float, max_inputs: int) -> None:
    utxos = _utxos(values)
    try:
        sel = select_coins(
            utxos, amount, rate, outputs_weight=PAY_W, dust_threshold=DUST, max_inputs=max_inputs
        )
    except InsufficientFundsError:
        # really insufficient: even every UTXO cannot pay amount + minimal fee
        w = TX_OVERHEAD_WEIGHT + PAY_W + P2WSH_2OF3_INPUT_WEIGHT * len(values)
        usable = [v for v in values if v > fee_for(vsize(P2WSH_2OF3_INPUT_WEIGHT) + 1, rate)]
        assert sum(usable) < amount + fee_for(vsize(w), rate) or not usable
        return
    except TooManyInputsError:
        # largest-first with max_inputs cannot cover it, so no selection can
        best = sorted(values, reverse=True)[:max_inputs]
        w = TX_OVERHEAD_WEIGHT + PAY_W + P2WSH_2OF3_INPUT_WEIGHT * len(best)
        assert sum(best) < amount + fee_for(vsize(w), rate)
        return
    # conservation: inputs = payment + fee + change
    assert sel.total_in == amount + sel.fee + sel.change
    # never dust change
    assert sel.change == 0 or sel.change >= DUST
    # bound on inputs, no duplicates, only given UTXOs
    assert 1 <= len(sel.inputs) <= max_inputs
    assert len(set(sel.inputs)) == len(sel.inputs) and set(sel.inputs) <= set(utxos)
    # the fee pays at least the rate for the worst-case size
    w = TX_OVERHEAD_WEIGHT + PAY_W + sum(u.input_weight for u in sel.inputs)
    if sel.change:
        w += output_weight_for(ScriptType.P2WSH)
    assert sel.vsize == vsize(w)
    assert sel.fee >= fee_for(sel.vsize, rate)
    # folding into the fee only ever loses a bounded amount
    if not sel.change:
        cost_of_change = fee_for(vsize(output_weight_for(ScriptType.P2WSH)), rate) + fee_for(
            vsize(P2WSH_2OF3_INPUT_WEIGHT), rate
        )
        assert sel.fee - fee_for(sel.vsize, rate) <= max(cost_of_change, DUST + cost_of_change)


def test_exact_match_needs_no_change() -> None:
    fee = fee_for(vsize(TX_OVERHEAD_WEIGHT + PAY_W + P2WSH_2OF3_INPUT_WEIGHT), 5.0)
    utxos = _utxos([1_000_000, 50_000 + fee, 3_000_000])
    sel = select_coins(utxos, 50_000, 5.0, outputs_weight=PAY_W)
    assert [u.value for u in sel.inputs] == [50_000 + fee] and sel.change == 0


def test_dust_change_is_folded_into_the_fee() -> None:
    fee_change = fee_for(
        vsize(
            TX_OVERHEAD_WEIGHT
            + PAY_W
            + P2WSH_2OF3_INPUT_WEIGHT
            + output_weight_for(ScriptType.P2WSH)
        ),
        1.0,
    )
    # leaves 100 sat of change, well below dust: must become fee
    value = 500_000 + fee_change + 100
    sel = select_coins(_utxos([value]), 500_000, 1.0, outputs_weight=PAY_W, dust_threshold=330)
    assert sel.change == 0 and sel.fee == value - 500_000


def test_errors_name_the_problem() -> None:
    with pytest.raises(InsufficientFundsError) as exc:
        select_coins(_utxos([1_000, 2_000]), 10_000, 1.0, outputs_weight=PAY_W)
    assert exc.value.code == 541
    with pytest.raises(TooManyInputsError) as exc2:
        select_coins(_utxos([10_000] * 20), 150_000, 1.0, outputs_weight=PAY_W, max_inputs=5)
    assert exc2.value.code == 542 and "5 inputs" in exc2.value.message


def test_uneconomic_utxos_are_ignored() -> None:
    # at 100 sat/vB a 2-of-3 input costs ~10 500 sat: a 5 000 sat UTXO is worth nothing
    sel = select_coins(_utxos([5_000, 200_000]), 50_000, 100.0, outputs_weight=PAY_W)
    assert [u.value for u in sel.inputs] == [200_000]


# -- fees
@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"feerate": 0.00010000, "blocks": 2}, 10.0),
        ({"feerate": 0.00001, "blocks": 6}, 1.0),
        ({"feerate": 0.0000025, "blocks": 6}, 1.0),  # 0.25 sat/vB -> floor
        ({"feerate": 0.05, "blocks": 1}, 500.0),  # 5000 sat/vB -> ceiling
        ({"feerate": 0.00012345, "blocks": 3}, 12.345),
    ],
)
def test_feerate_conversion_and_clamping(result: dict, expected: float) -> None:
    assert feerate_from_estimate(result, floor=1.0, ceiling=500.0) == pytest.approx(expected)


def test_feerate_without_estimate() -> None:
    no_data = {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
    with pytest.raises(FeeEstimateError, match="Insufficient data") as exc:
        feerate_from_estimate(no_data)
    assert exc.value.code == 545
    assert feerate_from_estimate(no_data, fallback=2.0) == 2.0
    for bad in ({"feerate": -1}, {"feerate": "abc"}, {"feerate": 0}):
        with pytest.raises(FeeEstimateError):
            feerate_from_estimate(bad)


def test_vsize_estimates() -> None:
    assert vsize(P2WPKH_INPUT_WEIGHT) == 68
    assert vsize(P2WSH_2OF3_INPUT_WEIGHT) == 105  # 104.5 rounded up
    # one P2WPKH input, two P2WPKH outputs: the classic 141 vB
    assert estimate_vsize([ScriptType.P2WPKH], [b"\x00\x14" + bytes(20)] * 2) == 141


def test_thousands_of_coins_do_not_exhaust_the_stack() -> None:
    """Branch and bound walks as deep as the wallet has coins: iteratively, not recursively."""
    values = [10_000 + (i * 7919) % 1_000_000 for i in range(5_000)]
    sel = select_coins(_utxos(values), 3_000_000, 2.0, outputs_weight=PAY_W, max_inputs=50)
    assert sel.total_in == sel.amount + sel.fee + sel.change
