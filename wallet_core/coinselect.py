"""Coin selection.

Algorithm (in order):

1. Each UTXO's *effective value* is its value minus the fee to spend it at the target rate;
   UTXOs with no positive effective value are never used.
2. **Branch and bound** (as in Bitcoin Core, Erhardt 2016): a depth-first search over UTXOs
   sorted by effective value, descending, for a set whose effective value lands in
   [target, target + cost_of_change] with at most `max_inputs` inputs. Such a set needs no
   change output; the small excess goes to the fee. Among sets found within the try budget
   the one with the least excess wins.
3. Otherwise **largest-first**: take UTXOs by descending effective value until the amount,
   the fee and a change output are covered. Largest-first uses the fewest inputs, so when
   it exceeds `max_inputs` no other choice would fit and `TooManyInputsError` is raised.
   If the change would be below `dust_threshold` it is not created: it is folded into the
   fee (never a dust output).

`InsufficientFundsError` when even every usable UTXO cannot pay; every result satisfies
sum(inputs) == amount + fee + change, change == 0 or change >= dust_threshold, and
fee >= ceil(rate * worst-case vsize).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InsufficientFundsError, TooManyInputsError
from .fees import (
    P2WSH_2OF3_INPUT_WEIGHT,
    TX_OVERHEAD_WEIGHT,
    fee_for,
    output_weight_for,
    vsize,
)
from .script import ScriptType

# Core tries 100 000 nodes in C++; in Python that is ~150 ms per build whenever no changeless
# set exists (the common case), taken while the account is locked for the build. 20 000 keep a
# build near 30 ms; when they find nothing, largest-first with change is used, as in Core.
BNB_MAX_TRIES = 20_000
DEFAULT_DUST_THRESHOLD = 330  # P2WSH dust at Core's 3 sat/vB dust relay fee


@dataclass(frozen=True)
class Utxo:
    """A spendable output: where it is, its value and the weight of spending it."""

    txid: str
    vout: int
    value: int
    input_weight: int = P2WSH_2OF3_INPUT_WEIGHT


@dataclass(frozen=True)
class Selection:
    inputs: tuple[Utxo, ...]
    amount: int
    fee: int
    change: int  # 0 = no change output
    vsize: int

    @property
    def total_in(self) -> int:
        return sum(u.value for u in self.inputs)

    @property
    def has_change(self) -> bool:
        return self.change > 0


def _fee(weight: int, rate: float) -> int:
    return fee_for(vsize(weight), rate)


def select_coins(
    utxos: Sequence[Utxo],
    amount: int,
    fee_rate: float,
    *,
    outputs_weight: int,
    change_output_weight: int = output_weight_for(ScriptType.P2WSH),
    change_spend_weight: int = P2WSH_2OF3_INPUT_WEIGHT,
    dust_threshold: int = DEFAULT_DUST_THRESHOLD,
    max_inputs: int = 50,
) -> Selection:
    """Choose inputs paying `amount` (sum of the payment outputs) at `fee_rate` sat/vB.

    `outputs_weight` is the weight of the payment outputs (without change).
    """
    if amount <= 0:
        raise ValueError("amount must be positive")
    if max_inputs < 1:
        raise ValueError("max_inputs must be at least 1")
    base_weight = TX_OVERHEAD_WEIGHT + outputs_weight
    usable = [u for u in utxos if u.value - fee_for(vsize(u.input_weight) + 1, fee_rate) > 0]
    usable.sort(key=lambda u: (-u.value, u.txid, u.vout))
    total_usable = sum(u.value for u in usable)
    if total_usable < amount + _fee(base_weight + sum(u.input_weight for u in usable), fee_rate):
        raise InsufficientFundsError(
            f"need {amount} sat plus fee, have {total_usable} sat in usable UTXOs"
        )

    found = _branch_and_bound(
        usable,
        amount,
        fee_rate,
        base_weight,
        change_output_weight,
        change_spend_weight,
        max_inputs,
    )
    if found is not None:
        return found
    return _largest_first(
        usable, amount, fee_rate, base_weight, change_output_weight, dust_threshold, max_inputs
    )


def _changeless(inputs: Sequence[Utxo], amount: int, rate: float, base_weight: int) -> Selection:
    w = base_weight + sum(u.input_weight for u in inputs)
    total = sum(u.value for u in inputs)
    return Selection(tuple(inputs), amount, total - amount, 0, vsize(w))


def _branch_and_bound(
    usable: list[Utxo],
    amount: int,
    rate: float,
    base_weight: int,
    change_w: int,
    change_spend_w: int,
    max_inputs: int,
) -> Selection | None:
    # search on fractional effective values; check each leaf with the exact integer fee
    eff = [u.value - rate * u.input_weight / 4 for u in usable]
    target = amount + rate * base_weight / 4
    cost_of_change = _fee(change_w, rate) + _fee(change_spend_w, rate)
    n = len(usable)
    remaining = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        remaining[i] = remaining[i + 1] + eff[i]
    best: list[int] | None = None
    best_excess = cost_of_change + 1
    chosen: list[int] = []
    tries = 0

    # Depth-first, iteratively (a wallet of thousands of coins is deeper than Python's
    # recursion limit): at each coin, first the branch that includes it, then the one that
    # omits it. A frame is (index, value so far, included): `included` marks the return from
    # the include branch, where the coin is dropped again and the omit branch follows.
    stack: list[tuple[int, float, bool]] = [(0, 0.0, False)]
    while stack:
        i, value, included = stack.pop()
        if included:
            chosen.pop()
            # skip equivalent siblings: omitting a UTXO equal to the one just omitted is redundant
            j = i + 1
            while j < n and (usable[j].value, usable[j].input_weight) == (
                usable[i].value,
                usable[i].input_weight,
            ):
                j += 1
            stack.append((j, value, False))
            continue
        tries += 1
        if tries > BNB_MAX_TRIES:
            break
        if value > target + cost_of_change + 1:
            continue
        if value >= target - 1:
            total = sum(usable[k].value for k in chosen)
            weight = base_weight + sum(usable[k].input_weight for k in chosen)
            excess = total - amount - _fee(weight, rate)
            if 0 <= excess < best_excess:
                best, best_excess = list(chosen), excess
            if excess >= 0:
                continue
        if i >= n or len(chosen) >= max_inputs or value + remaining[i] < target - 1:
            continue
        chosen.append(i)
        stack.append((i, value, True))
        stack.append((i + 1, value + eff[i], False))

    if best is None:
        return None
    return _changeless([usable[i] for i in best], amount, rate, base_weight)


def _largest_first(
    usable: list[Utxo],
    amount: int,
    rate: float,
    base_weight: int,
    change_w: int,
    dust: int,
    max_inputs: int,
) -> Selection:
    chosen: list[Utxo] = []
    total = 0
    in_weight = 0
    for u in usable:
        if len(chosen) == max_inputs:
            raise TooManyInputsError(f"paying {amount} sat needs more than {max_inputs} inputs")
        chosen.append(u)
        total += u.value
        in_weight += u.input_weight
        w_change = base_weight + in_weight + change_w
        change = total - amount - fee_for(vsize(w_change), rate)
        if change >= dust:
            fee = total - amount - change
            return Selection(tuple(chosen), amount, fee, change, vsize(w_change))
        if total - amount >= fee_for(vsize(base_weight + in_weight), rate):
            # enough for the payment but not for a non-dust change: fold the excess into the fee
            return _changeless(chosen, amount, rate, base_weight)
    raise InsufficientFundsError(f"need {amount} sat plus fee, have {total} sat")
