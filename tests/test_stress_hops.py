"""The batch and send paths many times in a row against the real processes: no call may be
slower than its hop's deadline, and no hop may log a failure.

Batches go custody API -> hot HSM -> serial link -> cold HSM (what the merchant site's fetch
does), both sides at once with reads of the account beside them, so the API's threads and
its hot HSM client serve concurrent requests; sends go hot HSM -> link -> cold HSM
co-signing (what the worker does). Each call is timed from outside against the deadline its
caller would give it, and no request watchdog may have reported a request past its deadline.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from custody.hsm_client import HotHsmClient
from examples.merchant_site.custody_client import DEFAULT_TIMEOUT as SITE_DEADLINE
from tests.harness import Deployment
from tests.hsm_fixtures import (
    PHONES,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    create_account,
    funded_coin,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core.psbt import Psbt
from wallet_core.wallets import RECEIVE

BATCHES = 6  # per side: 12 batch proofs over the link
SENDS = 15
SEND_DEADLINE = 60.0  # the worker's hot HSM deadline ([hsm_hot] rpc_timeout)


@pytest.mark.slow
def test_batch_and_send_paths_stay_within_their_deadlines(deployment: Any) -> None:
    d: Deployment = deployment()
    pair = HsmPair(d).start()
    d.cli("db", "upgrade", "--dir", str(d.data_dir))
    d.start_cli("custody-api", "custody.cli", "serve")
    vdev = VDevice("stress")
    created = create_account(d, "stress", vdev)
    account = created["account_id"]
    # the officer confirms it at the cold console, with room for this many sends in an hour
    confirm_account(d, account, vdev.identity_hex, "--max-sends-per-hour", str(SENDS * 2))
    api = f"http://127.0.0.1:{d.port('custody')}/api/v1/open"
    slow: list[str] = []

    def fetch(path: str, side: str) -> str | None:
        """None if answered 200 within the site's deadline, else what went wrong."""
        start = time.monotonic()
        try:
            r = requests.get(
                f"{api}{path}",
                headers={"token": created["tokens"][side], "X-CC-Deadline": str(SITE_DEADLINE)},
                timeout=SITE_DEADLINE,
            )
        except requests.Timeout:
            return f"{side} {path}: no answer within {SITE_DEADLINE:g}s"
        took = time.monotonic() - start
        if r.status_code != 200:
            return f"{side} {path}: HTTP {r.status_code} {r.text[:200]}"
        if path.startswith("/address/batch/") and len(r.json()) != 1000:
            return f"{side} {path}: {len(r.json())} addresses"
        return f"{side} {path}: {took:.1f}s" if took >= SITE_DEADLINE else None

    with ThreadPoolExecutor(6) as pool:
        for n in range(BATCHES):
            calls = [(f"/address/batch/{n}", side) for side in ("cold", "hot")]
            calls += [("/user", side) for side in ("cold", "hot") for _ in range(2)]
            slow += [p for p in pool.map(lambda c: fetch(*c), calls) if p is not None]

    client: HotHsmClient = pair.client(SEND_DEADLINE)
    prov = client.provision_account(
        account, "regtest", vdev.identity_hex, settlement_descriptor(1), **PHONES
    )
    client.register_channel(**vdev.channel_registration(account, "ch-stress"))
    wallet = hot_wallet(prov)
    for i in range(SENDS):
        coins = [funded_coin(wallet, 300_000, RECEIVE, i, 0, os.urandom(8).hex())]
        payments = [(random_address(), 50_000 + i)]
        psbt = build_send_psbt(wallet, coins, payments, change=(1, 249_000 - i))
        request = send_request(payments, f"stress-{i}")
        start = time.monotonic()
        signed = client.sign_send(
            account=account,
            psbt=psbt.to_base64(),
            request=request,
            vc_code=vdev.vc_code(request),
            c_id="ch-stress",
        )
        took = time.monotonic() - start
        Psbt.from_base64(signed).finalize()
        if took >= SEND_DEADLINE:
            slow.append(f"send {i}: {took:.1f}s")

    assert slow == []
    failed = [
        line
        for path in d.log_dir.glob("*")
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
        if (": failed: " in line and ("->" in line or " rpc " in line)) or "watchdog: " in line
    ]
    assert failed == []
