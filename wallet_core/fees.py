"""Fee rates and transaction size estimates.

- `feerate_from_estimate`: Bitcoin Core's `estimatesmartfee` answers in BTC/kvB; we want
  sat/vB, clamped to a policy floor (never below the relay minimum) and ceiling (a broken
  or manipulated estimator must not drain funds).
- Sizes are in weight units (WU, vsize = ceil(weight / 4)) with worst-case signatures
  (72 bytes including the sighash byte, low-S), so a fee computed from them never
  undershoots the rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation

from .errors import FeeEstimateError
from .script import ScriptType

# weights in WU
TX_OVERHEAD_WEIGHT = 4 * (4 + 1 + 1 + 4) + 2  # version, in/out counts, locktime; segwit flag
_NONWITNESS_INPUT = 4 * (32 + 4 + 1 + 4)  # outpoint, empty scriptSig, sequence
P2WPKH_INPUT_WEIGHT = _NONWITNESS_INPUT + (1 + (1 + 72) + (1 + 33))
# witness: count, empty dummy, 2 sigs, 2-of-3 witness script (105 bytes)
P2WSH_2OF3_INPUT_WEIGHT = _NONWITNESS_INPUT + (1 + 1 + 2 * (1 + 72) + (1 + 105))

_OUTPUT_SCRIPT_LEN = {
    ScriptType.P2PKH: 25,
    ScriptType.P2SH: 23,
    ScriptType.P2WPKH: 22,
    ScriptType.P2WSH: 34,
    ScriptType.P2TR: 34,
}

DEFAULT_FLOOR_SAT_VB = 1.0
DEFAULT_CEILING_SAT_VB = 500.0


def output_weight(script_pubkey: bytes) -> int:
    """Weight of one output: value (8) + script length (1) + script."""
    return 4 * (8 + 1 + len(script_pubkey))


def output_weight_for(script_type: ScriptType) -> int:
    return 4 * (8 + 1 + _OUTPUT_SCRIPT_LEN[script_type])


def input_weight(script_type: ScriptType) -> int:
    if script_type is ScriptType.P2WPKH:
        return P2WPKH_INPUT_WEIGHT
    if script_type is ScriptType.P2WSH:
        return P2WSH_2OF3_INPUT_WEIGHT
    raise ValueError(f"no input size estimate for {script_type.value}")


def vsize(weight: int) -> int:
    return (weight + 3) // 4


def estimate_vsize(input_types: Iterable[ScriptType], output_scripts: Iterable[bytes]) -> int:
    """Worst-case vsize of a transaction with these inputs and outputs."""
    w = TX_OVERHEAD_WEIGHT
    w += sum(input_weight(t) for t in input_types)
    w += sum(output_weight(s) for s in output_scripts)
    return vsize(w)


def fee_for(vsize_vb: int, rate_sat_vb: float) -> int:
    """Smallest integer fee paying at least `rate` for `vsize` (rounded up, never down)."""
    return math.ceil(Decimal(str(rate_sat_vb)) * vsize_vb)


def feerate_from_estimate(
    result: Mapping[str, object],
    *,
    floor: float = DEFAULT_FLOOR_SAT_VB,
    ceiling: float = DEFAULT_CEILING_SAT_VB,
    fallback: float | None = None,
) -> float:
    """sat/vB from an `estimatesmartfee` result, clamped to [floor, ceiling].

    Without a `feerate` (Core returns `errors` when it lacks data, as on a young regtest
    chain) the `fallback` is used if given, else `FeeEstimateError` is raised.
    """
    if floor <= 0 or ceiling < floor:
        raise FeeEstimateError(f"bad fee policy: floor {floor}, ceiling {ceiling}")
    raw = result.get("feerate") if isinstance(result, Mapping) else None
    if raw is None:
        if fallback is None:
            errors = result.get("errors") if isinstance(result, Mapping) else None
            raise FeeEstimateError(f"node gave no fee estimate: {errors or result!r}")
        rate = Decimal(str(fallback))
    else:
        try:
            btc_per_kvb = Decimal(str(raw))
        except InvalidOperation:
            raise FeeEstimateError(f"feerate {raw!r} is not a number") from None
        if not btc_per_kvb.is_finite() or btc_per_kvb <= 0:
            raise FeeEstimateError(f"feerate {raw!r} is not positive")
        rate = btc_per_kvb * Decimal(100_000)  # 1e8 sat/BTC / 1000 vB/kvB
    return float(min(max(rate, Decimal(str(floor))), Decimal(str(ceiling))))
