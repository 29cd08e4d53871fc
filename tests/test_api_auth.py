"""Token attacks on the custody API (DESIGN invariant 4): no token, a wrong or revoked token,
a cold token that tries to send, a hot token reaching for another account; rate limits; and
the error shape (never a stack trace or a database message)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from custody.accounts import rotate_token
from custody.api import tx_json
from custody.extensions import limiter
from custody.models import ApiToken, Send, TokenScope, Wallet
from tests.test_api_contract import API, add_txs, send_form

READS = ["/time", "/user", "/address/next", "/tx", "/address/history/0", "/address/batch/0"]


@pytest.mark.parametrize("path", READS + ["/tx/x1"])
def test_no_token_is_401(client, account, path):
    r = client.get(f"{API}{path}")
    assert r.status_code == 401
    assert r.json["code"] == 4 and "token" in r.json["message"]


@pytest.mark.parametrize("token", ["0" * 64, "x", "a" * 1000])
def test_wrong_token_is_401(client, account, token):
    assert client.get(f"{API}/user", headers={"token": token}).status_code == 401
    r = client.post(f"{API}/tx/request", headers={"token": token}, data=send_form())
    assert r.status_code == 401 and r.json == {"code": 4, "message": "invalid token"}


def test_cold_token_cannot_send(client, account, session_factory):
    r = client.post(f"{API}/tx/request", headers=account.cold, data=send_form())
    assert r.status_code == 403 and r.json["code"] == 5
    assert "hot token" in r.json["message"]
    assert client.get(f"{API}/tx/order-1", headers=account.cold).status_code == 403
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.cold, data={"status": "2", "type": "2"}
    )
    assert r.status_code == 403
    with session_factory() as s:
        assert s.execute(select(Send)).first() is None


def test_hot_token_never_sees_another_account(client, account, other_account, session_factory):
    theirs = add_txs(session_factory, other_account.id, Wallet.HOT, 2)
    assert (
        client.post(
            f"{API}/tx/request", headers=other_account.hot, data=send_form(user_tx_no="theirs")
        ).status_code
        == 200
    )
    assert client.get(f"{API}/tx/theirs", headers=account.hot).status_code == 404
    assert client.get(f"{API}/tx/detail/{theirs[0]}", headers=account.hot).status_code == 404
    assert client.get(f"{API}/tx", headers=account.hot).json == []
    r = client.get(f"{API}/tx", headers=account.hot, query_string={"tx_hash": theirs[0]})
    assert r.status_code == 404
    # the same user_tx_no is free in another account
    assert (
        client.post(
            f"{API}/tx/request", headers=account.hot, data=send_form(user_tx_no="theirs")
        ).status_code
        == 200
    )
    assert client.get(f"{API}/user", headers=account.hot).json["user_id"] == account.id
    # batches are per account: the other account's batch status cannot be set from here
    client.get(f"{API}/address/batch/0", headers=other_account.hot)
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.hot, data={"status": "3", "type": "1"}
    )
    assert r.status_code == 404


def test_rotated_token_is_revoked(client, account, session_factory):
    with session_factory() as s, s.begin():
        new = rotate_token(s, account.id, TokenScope.HOT)
    assert client.get(f"{API}/user", headers=account.hot).status_code == 401
    assert client.get(f"{API}/user", headers={"token": new}).json["wallet"] == "hot"
    assert client.get(f"{API}/user", headers=account.cold).status_code == 200
    with session_factory() as s:
        hashes = s.execute(select(ApiToken.token_hash)).scalars().all()
        assert new not in hashes and account.hot_token not in hashes  # stored hashed


def test_rate_limit_per_token(client, account, session_factory):
    with session_factory() as s, s.begin():
        s.execute(update(ApiToken).values(rate_limit_per_minute=5))
    codes = [client.get(f"{API}/time", headers=account.cold).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    r = client.get(f"{API}/time", headers=account.cold)
    assert r.json["code"] == 8 and int(r.headers["Retry-After"]) >= 1
    # the other token has its own budget
    assert client.get(f"{API}/time", headers=account.hot).status_code == 200


def test_rate_limiter_window_slides(app):

    with app.app_context():
        assert all(limiter.hit(99, 10, now=1000.0) is None for _ in range(10))
        assert limiter.hit(99, 10, now=1000.0) is not None
        # halfway through the next window, half the previous window still counts
        assert [limiter.hit(99, 10, now=1090.0) is None for _ in range(6)] == [True] * 5 + [False]
        assert limiter.hit(99, 10, now=1300.0) is None  # long idle: fresh window


def test_unexpected_error_is_a_bare_500(client, account, monkeypatch):

    def boom(*a, **k):
        raise RuntimeError('SELECT secret FROM "accounts" -- psycopg detail')

    monkeypatch.setattr(tx_json, "tx_page", boom)
    r = client.get(f"{API}/tx", headers=account.cold)
    assert r.status_code == 500
    assert r.json == {"code": 1, "message": "internal error"}
    assert b"SELECT" not in r.data and b"Traceback" not in r.data


def test_routing_errors_have_the_json_shape(client, account):
    r = client.get(f"{API}/nothing", headers=account.cold)
    assert r.status_code == 404 and r.json["code"] == 6
    r = client.delete(f"{API}/user", headers=account.cold)
    assert r.status_code == 405 and r.json["code"] == 15
    r = client.get(f"{API}/tx/request", headers=account.hot)  # GET: the send state route
    assert r.status_code == 404 and "request" in r.json["message"]
