"""ChainCloud strings, byte-exact: batch content, canonical send request, outs."""

from __future__ import annotations

import pytest

from wallet_core.bip32 import ExtendedKey
from wallet_core.chaincloud import (
    Out,
    batch_content,
    format_outs,
    parse_batch_content,
    parse_outs,
    send_request_string,
)
from wallet_core.errors import BatchError, OutsError
from wallet_core.networks import Network
from wallet_core.wallets import ColdWallet, batch_addresses

A1 = "1NbbvxBYxGGCBhaM8mow1HFWA7dB5yukmY"
A2 = "1MCs9SZwLg9JvLo6pzvVBWtmSV1dakwyM1"


def test_batch_content_uses_positions_within_the_batch() -> None:
    wallet = ColdWallet.from_root(
        ExtendedKey.from_seed(bytes(32), Network.REGTEST), Network.REGTEST
    )
    batch = batch_addresses(wallet, 3)
    text = batch_content([a for _, a in batch])
    assert text.startswith(f"0,{batch[0][1]}:1,{batch[1][1]}:")
    assert text.endswith(f":999,{batch[999][1]}:")
    assert "3000," not in text
    assert parse_batch_content(text) == [a for _, a in batch]
    assert len(text.encode()) > 0xFFFF // 2  # ~49 KB: the signed message needs a 3-byte varint


def test_batch_content_exact_small() -> None:
    assert batch_content(["a", "b"]) == "0,a:1,b:"
    with pytest.raises(BatchError):
        parse_batch_content("0,a:2,b:", expected_size=2)
    with pytest.raises(BatchError):
        batch_content(["a:b"])


def test_send_request_string_is_canonical() -> None:
    outs = f"{A1},10000;{A2},10000"
    assert send_request_string(outs, "order-17") == (
        '{"coin_code":"BTC","is_dynamic_fee":1,"outs":"' + outs + '","user_tx_no":"order-17"}'
    )
    assert '"is_dynamic_fee":0' in send_request_string(outs, "x", is_dynamic_fee=0)
    for bad in ('a"b', "a\\b", "", "x" * 129):
        with pytest.raises(OutsError):
            send_request_string(outs, bad)


def test_parse_and_format_outs() -> None:
    # the outs from the reference's published vtest example
    outs = f"{A1},10000;{A2},10000"
    parsed = parse_outs(outs, Network.MAINNET)
    assert parsed == [Out(A1, 10000), Out(A2, 10000)]
    assert format_outs(parsed) == outs


@pytest.mark.parametrize(
    ("outs", "fragment"),
    [
        ("", "empty"),
        (f"{A1}", "expected 'address,value'"),
        (f"{A1},1.5", "not an integer"),
        (f"{A1},-5", "not an integer"),
        (f"{A1},007", "not an integer"),
        (f"{A1},0", "out of range"),
        (f"{A1},2100000000000001", "out of range"),
        (f"{A1},10;", "output 1"),
        (f"{A1[:-1]}Z,10", "checksum"),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,10", "is for regtest, not mainnet"),
    ],
)
def test_bad_outs(outs: str, fragment: str) -> None:
    with pytest.raises(OutsError) as exc:
        parse_outs(outs, Network.MAINNET)
    assert fragment in exc.value.message and exc.value.code == 555
