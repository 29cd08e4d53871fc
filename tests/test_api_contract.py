"""Contract tests of the custody API against reference section 1: every endpoint, field names
and JSON types exactly; batches (creation, proof, next), addresses, /tx pagination, sends.
Runs on SQLite and PostgreSQL (see tests/api_fixtures.py)."""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from custody import send_statements
from custody.accounts import freeze_account
from custody.app import create_app
from custody.models import (
    Address,
    AddressBatch,
    Alert,
    BatchStatus,
    BlockSeen,
    Chain,
    ChainTx,
    ChainTxInput,
    ChainTxOutput,
    JournalEntry,
    KeyValue,
    Send,
    SendStatus,
    TxStatus,
    Utxo,
    Wallet,
)
from tests.api_fixtures import make_config, seen_block, sign_vc_code
from wallet_core.addresses import decode_address
from wallet_core.chaincloud import SendVerdict, send_request_string, verify_send_statement
from wallet_core.errors import WalletError
from wallet_core.messages import sign_message

API = "/api/v1/open"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
COLD_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
WSH_ADDR = "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry"


def shape(obj: dict[str, Any], types: dict[str, Any]) -> None:
    for key, typ in types.items():
        assert key in obj, f"missing field {key}"
        assert isinstance(obj[key], typ), f"{key}: {obj[key]!r} is not {typ}"
        if typ is int or typ == (int,):
            assert not isinstance(obj[key], bool), key


def verify_batch(session_factory, account_id: int, wallet: Wallet, n: int) -> None:
    with session_factory() as s, s.begin():
        b = s.execute(
            select(AddressBatch).where(
                AddressBatch.account_id == account_id,
                AddressBatch.wallet == wallet,
                AddressBatch.batch_no == n,
            )
        ).scalar_one()
        b.status = BatchStatus.VERIFIED


# -- /time, /user --------------------------------------------------------------------------
def test_time(client, account):
    r = client.get(f"{API}/time", headers=account.cold)
    assert r.status_code == 200
    shape(r.json, {"time": str})
    assert ISO.match(r.json["time"])


@pytest.mark.parametrize("side", ["cold", "hot"])
def test_user_shape(client, account, side):
    r = client.get(f"{API}/user", headers=getattr(account, side))
    assert r.status_code == 200
    u = r.json
    shape(u, {"user_id": int, "user_name": str, "balance": int, "register_at": str})
    assert u["user_id"] == account.id and u["user_name"] == "alice"
    assert u["balance"] == 0
    assert u["receiving_index"] is None and u["address"] is None  # no verified batch yet
    assert ISO.match(u["register_at"])
    assert u["wallet"] == side


def test_user_balance_counts_confirmed_funds_of_its_side(
    client,
    account,
    session_factory,
    app,
):
    """Balance: unspent UTXOs of the token's side with >= min confirmations, nothing else."""
    client.get(f"{API}/address/batch/0", headers=account.cold)
    client.get(f"{API}/address/batch/0", headers=account.hot)
    with session_factory() as s, s.begin():
        s.add_all(seen_block(h) for h in range(1, 11))
        addr = {
            w: s.execute(
                select(Address.id).where(Address.account_id == account.id, Address.wallet == w)
            )
            .scalars()
            .first()
            for w in Wallet
        }
        txid = iter(f"{i:064x}" for i in range(100, 200))
        utxos = [
            (Wallet.COLD, 1000, 5, None),  # confirmed
            (Wallet.COLD, 2000, 10, None),  # 1 confirmation
            (Wallet.COLD, 4000, None, None),  # mempool: not counted
            (Wallet.COLD, 8000, 3, "ff" * 32),  # spent: not counted
            (Wallet.HOT, 16000, 2, None),  # the other side
        ]
        for wallet, value, height, spent in utxos:
            s.add(
                Utxo(
                    account_id=account.id,
                    wallet=wallet,
                    txid=next(txid),
                    vout=0,
                    value=value,
                    address_id=addr[wallet],
                    block_height=height,
                    spent_by=spent,
                )
            )
        s.add(
            ChainTx(
                account_id=account.id,
                wallet=Wallet.COLD,
                txid=next(txid),
                status=TxStatus.CONFIRMED,
                value=1,
                block_height=5,
            )
        )
    assert client.get(f"{API}/user", headers=account.cold).json["balance"] == 3000
    assert client.get(f"{API}/user", headers=account.hot).json["balance"] == 16000
    # min_confirmations = 2 excludes the tip's output

    cfg = make_config(
        app.config["CC_CONFIG"].data_dir,
        app.config["CC_CONFIG"].section("custody").str("database_url"),
        "http://127.0.0.1:9",
        min_confirmations=2,
    )
    c2 = create_app(cfg, hsm=None, session_factory=session_factory).test_client()
    assert c2.get(f"{API}/user", headers=account.cold).json["balance"] == 1000


# -- batches --------------------------------------------------------------------------------
@pytest.mark.parametrize("side,wallet", [("cold", "cold"), ("hot", "hot")])
def test_batch_created_proven_and_stored(client, account, hsm, session_factory, side, wallet):
    r = client.get(f"{API}/address/batch/0", headers=getattr(account, side))
    assert r.status_code == 200, r.json
    batch = r.json
    assert isinstance(batch, list) and len(batch) == 1000
    for i, item in enumerate(batch):
        assert set(item) == {"index", "address"} and item["index"] == i
    # the stand-in derives from private roots along full paths: an independent check
    assert [a["address"] for a in batch] == hsm.batch_addresses(account.id, wallet, 0)
    r1 = client.get(f"{API}/address/batch/1", headers=getattr(account, side))
    assert [a["index"] for a in r1.json] == list(range(1000, 2000))
    # an existing batch is answered from storage, not proven again
    proofs = hsm.proofs_made
    assert client.get(f"{API}/address/batch/0", headers=getattr(account, side)).json == batch
    assert hsm.proofs_made == proofs
    with session_factory() as s:
        rows = s.execute(select(AddressBatch).order_by(AddressBatch.batch_no)).scalars().all()
        assert [(b.batch_no, b.status) for b in rows] == [
            (0, BatchStatus.PROVEN),
            (1, BatchStatus.PROVEN),
        ]
        assert all(b.proof for b in rows)
        assert s.execute(select(func.count(Address.id))).scalar() == 2000
        kinds = s.execute(select(JournalEntry.kind)).scalars().all()
        assert kinds.count("batch_created") == 2 and kinds.count("batch_proven") == 2
        # every stored row (COPY on PostgreSQL) reads back as written: the watcher matches
        # deposits by these scripts
        stored = s.execute(
            select(Address).where(Address.batch_id == rows[0].id).order_by(Address.index)
        ).scalars()
        assert [
            (r.index, r.address, r.script_pubkey, r.wallet, r.chain, r.account_id) for r in stored
        ] == [
            (
                i,
                a,
                decode_address(a).script_pubkey,
                Wallet[wallet.upper()],
                Chain.RECEIVE,
                account.id,
            )
            for i, a in enumerate(hsm.batch_addresses(account.id, wallet, 0))
        ]


def test_concurrent_requests_for_a_new_batch_store_it_once(client, account, session_factory):
    """Two requests for the same new batch at once (the rows of the first are written while
    its proof is on the way): both answer the same addresses, one batch is stored."""
    answers: list[Any] = [None, None]

    def fetch(k: int) -> None:
        answers[k] = client.get(f"{API}/address/batch/0", headers=account.cold)

    threads = [threading.Thread(target=fetch, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in answers] == [200, 200], [r.json for r in answers]
    assert answers[0].json == answers[1].json and len(answers[0].json) == 1000
    with session_factory() as s:
        assert s.execute(select(func.count(AddressBatch.id))).scalar() == 1
        assert s.execute(select(func.count(Address.id))).scalar() == 1000
        kinds = s.execute(select(JournalEntry.kind)).scalars().all()
        assert kinds.count("batch_created") == 1 and kinds.count("batch_proven") == 1


def test_batch_beyond_next_is_400_naming_the_next(client, account):
    r = client.get(f"{API}/address/batch/1", headers=account.cold)
    assert r.status_code == 400
    assert r.json["code"] == 10 and "next batch is 0" in r.json["message"]
    client.get(f"{API}/address/batch/0", headers=account.cold)
    r = client.get(f"{API}/address/batch/5", headers=account.cold)
    assert r.status_code == 400 and "next batch is 1" in r.json["message"]
    # sides are separate: the hot side still starts at 0
    r = client.get(f"{API}/address/batch/1", headers=account.hot)
    assert "next batch is 0" in r.json["message"]


def test_substituted_address_in_proof_refuses_batch_and_stores_nothing(
    client,
    account,
    hsm,
    session_factory,
    sms,
):
    hsm.tamper_batch = (417, COLD_ADDR)
    r = client.get(f"{API}/address/batch/0", headers=account.cold)
    assert r.status_code == 502
    assert r.json["code"] == 12 and "does not verify" in r.json["message"]
    with session_factory() as s:
        assert s.execute(select(func.count(AddressBatch.id))).scalar() == 0
        assert s.execute(select(func.count(Address.id))).scalar() == 0
        alert = s.execute(select(Alert)).scalar_one()
        assert alert.kind == "batch_failed" and alert.delivered
    assert len(sms.messages) == 1
    hsm.tamper_batch = None
    assert client.get(f"{API}/address/batch/0", headers=account.cold).status_code == 200


# -- next address, history, batch status ----------------------------------------------------
def test_next_address_needs_a_verified_batch(client, account, session_factory, sms):
    r = client.get(f"{API}/address/next", headers=account.cold)
    assert r.status_code == 409 and r.json["code"] == 11
    assert "request batch 0" in r.json["message"]
    batch = client.get(f"{API}/address/batch/0", headers=account.cold).json
    r = client.get(f"{API}/address/next", headers=account.cold)
    assert r.status_code == 409 and "batch 0 must be verified" in r.json["message"]
    # the V-device reports with the hot token; type 2 = cold batch
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.hot, data={"status": "2", "type": "2"}
    )
    assert r.status_code == 200 and r.json == {"result": True}
    got = [client.get(f"{API}/address/next", headers=account.cold).json for _ in range(3)]
    assert got == batch[:3]
    shape(got[0], {"index": int, "address": str})
    u = client.get(f"{API}/user", headers=account.cold).json
    assert u["receiving_index"] == 3 and u["address"] == batch[3]["address"]
    hist = client.get(f"{API}/address/history/0", headers=account.cold).json
    assert hist == [batch[2], batch[1], batch[0]]
    after = client.get(
        f"{API}/address/history/0",
        headers=account.cold,
        query_string={"since_address": batch[2]["address"]},
    ).json
    assert after == [batch[1], batch[0]]
    assert client.get(f"{API}/address/history/1", headers=account.cold).json == []
    assert client.get(f"{API}/address/history/2", headers=account.cold).status_code == 400
    r = client.get(
        f"{API}/address/history/0", headers=account.cold, query_string={"since_address": COLD_ADDR}
    )
    assert r.status_code == 404
    # the hot side is untouched
    assert client.get(f"{API}/address/next", headers=account.hot).status_code == 409


def test_failed_batch_never_serves_and_alerts(client, account, session_factory, sms):
    client.get(f"{API}/address/batch/0", headers=account.hot)
    batch1 = client.get(f"{API}/address/batch/1", headers=account.hot).json
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.hot, data={"status": "3", "type": "1"}
    )
    assert r.status_code == 200
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.hot, data={"status": "2", "type": "1"}
    )
    assert r.status_code == 409  # a failed batch stays failed
    client.post(
        f"{API}/address/batch/1/status", headers=account.hot, data={"status": "2", "type": "1"}
    )
    assert client.get(f"{API}/address/next", headers=account.hot).json == batch1[0]
    assert len(sms.messages) == 1 and "batch_failed" in sms.messages[0]["Body"]
    assert sms.messages[0]["To"] == "+15550001000"
    for bad in ({"status": "4", "type": "1"}, {"status": "2", "type": "3"}, {}):
        r = client.post(f"{API}/address/batch/1/status", headers=account.hot, data=bad)
        assert r.status_code == 400 and r.json["code"] == 2
    r = client.post(
        f"{API}/address/batch/9/status", headers=account.hot, data={"status": "2", "type": "1"}
    )
    assert r.status_code == 404


def test_unverified_batches_serve_when_configured(
    tmp_path,
    db_url,
    sms,
    hsm,
    session_factory,
    account,
):

    cfg = make_config(tmp_path, db_url, sms.url, require_verified_batches=False)
    c = create_app(cfg, hsm=hsm, session_factory=session_factory).test_client()
    batch = c.get(f"{API}/address/batch/0", headers=account.cold).json
    assert c.get(f"{API}/address/next", headers=account.cold).json == batch[0]


# -- /tx ------------------------------------------------------------------------------------
def add_txs(session_factory, account_id: int, wallet: Wallet, n: int, start: int = 0):
    """n transactions straight into the tables (the watcher's job), oldest first."""
    base = datetime(2024, 1, 1)
    txids = []
    with session_factory() as s, s.begin():
        for i in range(start, start + n):
            txid = f"{account_id:02x}{int(wallet):02x}{i:060x}"
            txids.append(txid)
            confirmed = i % 5 != 4
            tx = ChainTx(
                account_id=account_id,
                wallet=wallet,
                txid=txid,
                status=TxStatus.CONFIRMED if confirmed else TxStatus.MEMPOOL,
                block_height=100 + i if confirmed else None,
                block_hash=f"{100 + i:064x}" if confirmed else None,
                value=10_000 + i if i % 3 else -(5_000 + i),
                tx_at=base + timedelta(minutes=i),
                confirm_at=base + timedelta(minutes=i, seconds=30) if confirmed else None,
            )
            tx.inputs = [
                ChainTxInput(
                    sn=0,
                    prev_tx_hash="aa" * 32,
                    prev_out_sn=i,
                    address=WSH_ADDR,
                    value=50_000,
                    is_mine=i % 3 == 0,
                )
            ]
            tx.outputs = [
                ChainTxOutput(
                    sn=k, address=COLD_ADDR, value=1000 * (k + 1), is_mine=k == 0, spent=k == 1
                )
                for k in range(2)
            ]
            s.add(tx)
        s.add(
            BlockSeen(
                height=100 + start + n + 10,
                block_hash=f"{start + n:064x}",
                prev_hash="00" * 32,
                time=base,
            )
        )
    return txids


def check_tx(tx: dict[str, Any]) -> None:
    shape(
        tx,
        {
            "tx_hash": str,
            "confirmation": int,
            "tx_at": str,
            "value": int,
            "inputs": list,
            "outputs": list,
        },
    )
    assert tx["confirm_at"] is None or ISO.match(tx["confirm_at"])
    assert ISO.match(tx["tx_at"])
    for i in tx["inputs"]:
        shape(
            i,
            {
                "sn": int,
                "prev_tx_hash": str,
                "prev_out_sn": int,
                "address": str,
                "value": int,
                "is_mine": bool,
            },
        )
    for o in tx["outputs"]:
        shape(o, {"sn": int, "address": str, "value": int, "is_mine": bool, "status": int})
        assert o["status"] in (0, 1)


def test_tx_pagination(client, account, other_account, session_factory):
    txids = add_txs(session_factory, account.id, Wallet.COLD, 45)
    add_txs(session_factory, account.id, Wallet.HOT, 3)
    add_txs(session_factory, other_account.id, Wallet.COLD, 5)
    page1 = client.get(f"{API}/tx", headers=account.cold).json
    assert [t["tx_hash"] for t in page1] == txids[:20]
    page2 = client.get(f"{API}/tx", headers=account.cold, query_string={"tx_hash": txids[19]}).json
    assert [t["tx_hash"] for t in page2] == txids[20:40]
    page3 = client.get(
        f"{API}/tx", headers=account.cold, query_string={"tx_hash": page2[-1]["tx_hash"]}
    ).json
    assert [t["tx_hash"] for t in page3] == txids[40:]
    assert (
        client.get(f"{API}/tx", headers=account.cold, query_string={"tx_hash": txids[-1]}).json
        == []
    )
    for t in page1 + page2 + page3:
        check_tx(t)
    t0 = page1[0]
    # best height = 100 + 45 + 10 = 155; tx 0 is in block 100
    assert t0["confirmation"] == 56 and t0["value"] == -5000
    assert t0["outputs"][0]["status"] == 1 and t0["outputs"][1]["status"] == 0
    assert page1[4]["confirmation"] == 0 and page1[4]["confirm_at"] is None
    # the hot side sees only its own 3
    assert len(client.get(f"{API}/tx", headers=account.hot).json) == 3
    # another side's or account's hash is not a valid cursor
    r = client.get(f"{API}/tx", headers=account.hot, query_string={"tx_hash": txids[0]})
    assert r.status_code == 404
    r = client.get(f"{API}/tx", headers=account.cold, query_string={"tx_hash": "xyz"})
    assert r.status_code == 400 and r.json["code"] == 2


def test_tx_removed_by_reorg_disappears(client, account, session_factory):
    txids = add_txs(session_factory, account.id, Wallet.COLD, 3)
    with session_factory() as s, s.begin():
        tx = s.execute(select(ChainTx).where(ChainTx.txid == txids[1])).scalar_one()
        tx.status = TxStatus.REMOVED
    got = [t["tx_hash"] for t in client.get(f"{API}/tx", headers=account.cold).json]
    assert got == [txids[0], txids[2]]
    assert client.get(f"{API}/tx/detail/{txids[1]}", headers=account.cold).status_code == 404


def test_tx_detail(client, account, other_account, session_factory):
    txids = add_txs(session_factory, account.id, Wallet.COLD, 2)
    r = client.get(f"{API}/tx/detail/{txids[1]}", headers=account.cold)
    assert r.status_code == 200
    check_tx(r.json)
    assert r.json["tx_hash"] == txids[1]
    assert client.get(f"{API}/tx/detail/{txids[1]}", headers=account.hot).status_code == 404
    assert client.get(f"{API}/tx/detail/{txids[1]}", headers=other_account.cold).status_code == 404
    assert client.get(f"{API}/tx/detail/nothex", headers=account.cold).status_code == 400


# -- sends ----------------------------------------------------------------------------------
VC = "H" + "A" * 86 + "="  # 65 bytes of base64 (content checked by the cold HSM)


def send_form(**over: str) -> dict[str, str]:
    form = {
        "coin_code": "BTC",
        "user_tx_no": "order-1",
        "outs": f"{COLD_ADDR},10000;{WSH_ADDR},20000",
        "is_dynamic_fee": "1",
        "vc_code": VC,
        "c_id": "7",
    }
    form.update(over)
    if "vc_code" not in over:
        # The V-device's real signature under channel c_id (the stand-in vouches for its key);
        # a form that cannot be signed keeps the placeholder (it fails validation anyway).
        with contextlib.suppress(KeyError, TypeError, ValueError, WalletError):
            form["vc_code"] = sign_vc_code(form)
    return {k: v for k, v in form.items() if v is not None}


def test_send_request_and_state(client, account, session_factory):
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form())
    assert r.status_code == 200 and r.json == {"result": True}
    r = client.get(f"{API}/tx/order-1", headers=account.hot)
    assert r.status_code == 200
    st = r.json
    shape(
        st,
        {
            "c_id": str,
            "user_id": int,
            "send_request": dict,
            "vc_code": str,
            "request_at": str,
            "hot_wallet_tx_id": int,
            "hot_wallet_tx_status": str,
            "failure_reason": str,
        },
    )
    assert st["tx_hash"] is None and st["tx_at"] is None
    assert st["hot_wallet_tx_status"] == "pending"
    assert st["send_request"] == {
        "coin_code": "BTC",
        "user_tx_no": "order-1",
        "is_dynamic_fee": 1,
        "outs": f"{COLD_ADDR},10000;{WSH_ADDR},20000",
    }
    vc = send_form()["vc_code"]
    assert st["user_id"] == account.id and st["vc_code"] == vc and st["c_id"] == "7"
    with session_factory() as s, s.begin():
        send = s.execute(select(Send)).scalar_one()
        assert send.status is SendStatus.PENDING
        assert "send_requested" in s.execute(select(JournalEntry.kind)).scalars().all()
        send.status, send.txid, send.tx_at = SendStatus.BROADCAST, "ab" * 32, datetime(2024, 1, 2)
    st = client.get(f"{API}/tx/order-1", headers=account.hot).json
    assert st["hot_wallet_tx_status"] == "OK" and st["tx_hash"] == "ab" * 32
    assert st["tx_at"] == "2024-01-02T00:00:00"
    with session_factory() as s, s.begin():
        send = s.execute(select(Send)).scalar_one()
        send.status, send.failure_reason = SendStatus.FAILED, "fee above policy"
    st = client.get(f"{API}/tx/order-1", headers=account.hot).json
    assert st["hot_wallet_tx_status"] == "failed" and st["failure_reason"] == "fee above policy"
    with session_factory() as s, s.begin():
        send = s.execute(select(Send)).scalar_one()
        send.status, send.failure_reason = SendStatus.WAITING_FUNDS, ""
        send.state_reason = "waiting for funds: need 30000 sat plus fee, have 0 sat"
    st = client.get(f"{API}/tx/order-1", headers=account.hot).json
    assert st["hot_wallet_tx_status"] == "pending" and st["failure_reason"] == ""
    assert st["cc_state"] == "waiting_funds"
    assert st["cc_state_reason"].startswith("waiting for funds: need 30000 sat")
    assert client.get(f"{API}/tx/order-2", headers=account.hot).status_code == 404


def test_send_request_is_idempotent(client, account, session_factory):
    assert client.post(f"{API}/tx/request", headers=account.hot, data=send_form()).json == {
        "result": True
    }
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form())
    assert r.status_code == 400
    assert r.json["code"] == 3 and "already accepted" in r.json["message"]
    # even with other outputs: the user_tx_no is what counts
    r = client.post(
        f"{API}/tx/request", headers=account.hot, data=send_form(outs=f"{COLD_ADDR},99999")
    )
    assert r.json["code"] == 3
    with session_factory() as s:
        assert s.execute(select(func.count(Send.id))).scalar() == 1


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"coin_code": "LTC"}, "coin_code"),
        ({"user_tx_no": None}, "user_tx_no is required"),
        ({"user_tx_no": "x" * 65}, "user_tx_no"),
        ({"user_tx_no": 'a"b'}, "user_tx_no"),
        ({"user_tx_no": "order-1\n"}, "form field 'user_tx_no' contains a control"),
        ({"user_tx_no": "order\u202e1"}, "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ({"user_tx_no": "order 1"}, "printable ASCII except space"),
        ({"user_tx_no": "ordré"}, "printable ASCII"),
        ({"c_id": "7\u2066"}, "form field 'c_id' contains a control or bidi"),
        ({"outs": f"{COLD_ADDR},10000\n"}, "control"),
        ({"outs": None}, "outs is required"),
        ({"outs": f"{COLD_ADDR}"}, "outs"),
        ({"outs": f"{COLD_ADDR},1.5"}, "not an integer"),
        ({"outs": f"{COLD_ADDR},-5"}, "not an integer"),
        ({"outs": f"{COLD_ADDR},0"}, "out of range"),
        ({"outs": f"{COLD_ADDR},293"}, "dust"),
        ({"outs": f"{WSH_ADDR},329"}, "dust"),
        ({"outs": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4,10000"}, "not regtest"),
        ({"outs": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081,10000"}, "outs"),
        ({"outs": f"{COLD_ADDR},10000;"}, "outs"),
        ({"is_dynamic_fee": "2"}, "is_dynamic_fee"),
        ({"vc_code": None}, "vc_code is required"),
        ({"vc_code": "not base64!"}, "vc_code"),
        ({"vc_code": "AAAA"}, "65-byte"),
        ({"c_id": None}, "c_id is required"),
        ({"c_id": "x" * 65}, "c_id"),
    ],
)
def test_send_request_validation(client, account, session_factory, over, needle):
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form(**over))
    assert r.status_code == 400, r.json
    assert r.json["code"] == 2 and needle in r.json["message"], r.json
    with session_factory() as s:
        assert s.execute(select(func.count(Send.id))).scalar() == 0


def test_forged_vc_code_is_refused_before_the_hsms(client, account, session_factory, hsm):
    """A stolen hot token and a vc_code of the thief's own: 400, nothing stored or frozen."""
    form = send_form()
    text = send_request_string(form["outs"], form["user_tx_no"])
    forged = sign_message(b"\x01" * 32, text)
    r = client.post(f"{API}/tx/request", headers=account.hot, data={**form, "vc_code": forged})
    assert r.status_code == 400 and r.json["code"] == 40, r.json
    assert "nothing frozen" in r.json["message"]
    # the genuine signature for other outs does not cover these outs
    other = send_form(outs=f"{COLD_ADDR},10001")["vc_code"]
    r = client.post(f"{API}/tx/request", headers=account.hot, data={**form, "vc_code": other})
    assert r.status_code == 400 and r.json["code"] == 40
    hsm.unknown_channels.add("9")
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form(c_id="9"))
    assert r.status_code == 400 and r.json["code"] == 41 and "'9'" in r.json["message"]
    with session_factory() as s:
        assert s.execute(select(func.count(Send.id))).scalar() == 0
    assert hsm.frozen == [] and hsm.calls == []
    assert client.get(f"{API}/user", headers=account.hot).json["status"] != "frozen"
    calls = hsm.channel_key_calls
    assert client.post(f"{API}/tx/request", headers=account.hot, data=form).status_code == 200
    assert hsm.channel_key_calls == calls  # the verified channel key is kept


def test_channel_key_not_vouched_by_the_pinned_identity(client, account, session_factory, hsm):
    """A hot HSM (or anything between) that offers its own channel key is not believed."""
    hsm.channel_statement_priv = b"\x02" * 32
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form(c_id="other"))
    assert r.status_code == 502 and r.json["code"] == 12, r.json
    with session_factory() as s:
        assert s.execute(select(func.count(Send.id))).scalar() == 0


def test_final_sends_carry_the_cold_statement(client, account, session_factory, hsm):
    """'failed' comes with the cold HSM's signed 'refused' (which closes the number), and a
    number custody never accepted can be closed by the V-device to learn its fate."""
    identity = hsm.identity_pub
    assert (
        client.post(f"{API}/tx/request", headers=account.hot, data=send_form()).status_code == 200
    )
    st = client.get(f"{API}/tx/order-1", headers=account.hot).json
    assert "cold_statement" not in st  # pending: asking would close it
    r = client.post(f"{API}/tx/order-1/statement", headers=account.hot)
    assert r.status_code == 409 and r.json["code"] == 7
    with session_factory() as s, s.begin():
        s.execute(update(Send).values(status=SendStatus.FAILED, failure_reason="no funds"))
    st = client.get(f"{API}/tx/order-1", headers=account.hot).json
    verdict = verify_send_statement(identity, account.id, "order-1", st["cold_statement"])
    assert verdict == SendVerdict(False, code=741)
    # kept: a second look asks the HSM nothing
    made = hsm.statements_made
    assert (
        client.get(f"{API}/tx/order-1", headers=account.hot).json["cold_statement"]
        == (st["cold_statement"])
    )
    assert hsm.statements_made == made
    # a statement for another account or number does not verify
    assert verify_send_statement(identity, account.id + 1, "order-1", st["cold_statement"]) is None
    assert verify_send_statement(identity, account.id, "order-2", st["cold_statement"]) is None
    # a number custody refused at intake: the V-device closes it and gets the proof
    r = client.post(f"{API}/tx/never-seen/statement", headers=account.hot)
    assert r.status_code == 200, r.json
    verdict = verify_send_statement(identity, account.id, "never-seen", r.json["cold_statement"])
    assert verdict is not None and not verdict.signed
    assert (account.id, "never-seen") in hsm.closed
    r = client.post(f"{API}/tx/other/statement", headers=account.cold)
    assert r.status_code == 403  # the cold token cannot close hot sends


def test_a_statement_asked_twice_at_once_is_kept_once(account, session_factory, hsm):
    """Two requests ask for one send's statement at once: the other one stores it between our
    look and our insert. Ours still answers, and one row stays (it was a 500 on the key)."""
    key = send_statements._key(account.id, "raced")
    raced: list[bool] = []

    def other_request_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if raced or not statement.lstrip().upper().startswith("INSERT INTO SERVICE_STATE"):
            return
        raced.append(True)
        with session_factory() as other, other.begin():
            other.add(KeyValue(key=key, value="{}"))

    with session_factory() as s:
        engine = s.get_bind()
        event.listen(engine, "before_cursor_execute", other_request_first)
        try:
            answer = send_statements.statement(s, hsm, account.id, "raced", None)
        finally:
            event.remove(engine, "before_cursor_execute", other_request_first)
    assert raced
    verdict = verify_send_statement(hsm.identity_pub, account.id, "raced", answer)
    assert verdict is not None and not verdict.signed
    with session_factory() as s:
        assert s.execute(select(func.count()).where(KeyValue.key == key)).scalar() == 1


def test_send_state_path_refuses_control_and_bidi(client, account):
    for bad, needle in (("order%E2%80%AE1", "path part 'user_tx_no'"), ("a%0A", "control")):
        r = client.get(f"{API}/tx/{bad}", headers=account.hot)
        assert r.status_code == 400 and r.json["code"] == 2 and needle in r.json["message"]
    r = client.get(f"{API}/tx?tx_hash=%E2%80%8F", headers=account.hot)
    assert r.status_code == 400 and "query argument 'tx_hash'" in r.json["message"]
    r = client.post(
        f"{API}/tx/request", headers=account.hot, json={**send_form(), "c_id": "7\u202e"}
    )
    assert r.status_code == 400 and "JSON body.c_id contains a control" in r.json["message"]


def test_send_defaults_and_dust_edge(client, account, session_factory):
    form = send_form(outs=f"{COLD_ADDR},294", coin_code=None, is_dynamic_fee=None)
    assert client.post(f"{API}/tx/request", headers=account.hot, data=form).status_code == 200
    with session_factory() as s:
        send = s.execute(select(Send)).scalar_one()
        assert send.coin_code == "BTC" and send.is_dynamic_fee == 1


def test_frozen_account_refuses_sends(client, account, session_factory, hsm, config, sms):

    with session_factory() as s, s.begin():
        assert freeze_account(s, hsm, account.id, "suspicious activity", config)
    r = client.post(f"{API}/tx/request", headers=account.hot, data=send_form())
    assert r.status_code == 409 and r.json["code"] == 9
    assert client.get(f"{API}/user", headers=account.hot).json["status"] == "frozen"
    assert hsm.frozen == [(account.id, "suspicious activity")]
    assert any("account_frozen" in m["Body"] for m in sms.messages)
