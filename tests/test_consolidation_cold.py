"""The cold HSM alone on its serial line: `consolidate` refuses, and freezes the account for,
any output that is not the account's own change, and refuses a foreign input; a valid
consolidation's signatures verify for the cold child keys."""

from __future__ import annotations

from typing import Any

from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import (
    TIMEOUT,
    check_cold_signatures,
    frozen_for,
    provision,
    refused,
    unsigned_tx,
)
from tests.hsm_fixtures import build_send_psbt, random_address
from wallet_core.wallets import RECEIVE


def payload(acct: Any, coins: list[Any], psbt: Any, change: list[list[int]]) -> dict[str, Any]:
    return {
        "account": acct.number,
        "tx": unsigned_tx(psbt),
        "inputs": [[c.value, c.chain, c.index] for c in coins],
        "change": change,
        "prev_txs": list(dict.fromkeys(c.prev_tx for c in coins if c.prev_tx)),
    }


def test_consolidation_signs_only_own_change(cold: Any, link: Any) -> None:
    acct = provision(cold, link, 71)
    coins = [acct.coin(400_000), acct.coin(300_000, RECEIVE)]
    psbt = build_send_psbt(acct.wallet, coins, [], change=(3, 700_000 - 1_500))
    sigs = link.call("consolidate", payload(acct, coins, psbt, [[0, 3]]), timeout=TIMEOUT)
    check_cold_signatures(acct, psbt, coins, sigs["signatures"])

    acct = provision(cold, link, 72)
    coins = [acct.coin(400_000)]
    psbt = build_send_psbt(acct.wallet, coins, [(random_address(), 100_000)], change=(2, 298_000))
    err = refused(link, "consolidate", payload(acct, coins, psbt, [[0, 5], [1, 2]]))
    assert err.code == ColdErrorCode.CHANGE_NOT_DERIVABLE
    assert "not the hot wallet's change address 5" in err.message
    assert "not a consolidation" in (frozen_for(link, 72) or "")

    acct = provision(cold, link, 73)
    coins = [acct.coin(400_000)]
    psbt = build_send_psbt(acct.wallet, coins, [(random_address(), 100_000)], change=(2, 298_000))
    err = refused(link, "consolidate", payload(acct, coins, psbt, [[1, 2]]))  # payment undeclared
    assert err.code == ColdErrorCode.CHANGE_NOT_DERIVABLE
    assert "every output must be declared change" in err.message
