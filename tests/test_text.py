"""Control and bidi characters are refused at every boundary and escaped in logs and alerts."""

from __future__ import annotations

import logging

import pytest

from cc_common import cli
from cc_common.sms import channel_messages as cm
from cc_common.sms.errors import SmsFormatError
from cc_common.text import SafeTextFilter, UnsafeText, check_text, check_values, printable
from wallet_core.chaincloud import check_user_tx_no, parse_outs, send_request_string
from wallet_core.errors import OutsError
from wallet_core.networks import Network

RLO = "\u202e"
BAD = ["a\n", "a\r", "a\x00", "a\x7f", "a\tb", f"order{RLO}1", "a\u2066b", "a\u200fb", "a\u2028b"]
BAD += ["\x1b[2J"]


@pytest.mark.parametrize("value", BAD)
def test_check_text_refuses_control_and_bidi(value: str) -> None:
    with pytest.raises(UnsafeText) as exc:
        check_text(value, "field 'x'")
    assert "field 'x'" in exc.value.message and "U+" in exc.value.message
    assert exc.value.code == 101


def test_check_text_keeps_ordinary_text() -> None:
    for value in ("order-1", "Zürich 北京", "a b", "x" * 500):
        assert check_text(value, "f") == value


def test_printable_escapes_what_is_refused() -> None:
    assert printable(f"order{RLO}1\nnext") == "order\\u202e1\\x0anext"
    assert printable("plain") == "plain"


def test_log_lines_show_escapes() -> None:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "id %s", (f"a{RLO}\nb",), None)
    assert SafeTextFilter().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert line == "id a\\u202e\\x0ab" and "\n" not in line


@pytest.mark.parametrize(
    "value", ["order-1\n", "order 1", f"o{RLO}", "a\tb", 'a"b', "a\\b", "é", "", "x" * 129]
)
def test_user_tx_no_fullmatch(value: str) -> None:
    with pytest.raises(OutsError, match="printable ASCII"):
        check_user_tx_no(value)
    with pytest.raises(OutsError):
        send_request_string("addr,1", value)


def test_user_tx_no_accepts_its_documented_set() -> None:
    value = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
    assert check_user_tx_no(value) == value


def test_outs_value_fullmatch() -> None:
    with pytest.raises(OutsError, match="not an integer"):
        parse_outs("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,1000\n", Network.REGTEST)


@pytest.mark.parametrize(
    "text", ["CC:PING\u202e", "CC:TIME\x00", "CC:VERIFY_COLD_ADDRESSES:0\x1b:BTC:"]
)
def test_sms_parser_refuses(text: str) -> None:
    with pytest.raises(SmsFormatError, match="control or bidi"):
        cm.parse(text)


def test_cli_refuses_before_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse  # noqa: PLC0415

    called = []
    parser = argparse.ArgumentParser()
    parser.add_argument("value", help="anything")
    parser.set_defaults(handler=lambda args: called.append(args.value))
    assert cli.run(parser, [f"order{RLO}1"]) == 2
    assert called == []
    assert "argument 1 contains a control or bidi character (U+202E" in capsys.readouterr().err
    assert cli.run(parser, ["order-1"]) == 0 and called == ["order-1"]


def test_check_values_walks_a_tree() -> None:
    check_values({"a": ["x", {"b": 1}], "c": None}, "params")
    with pytest.raises(UnsafeText, match=r"params.a\[1\].b contains"):
        check_values({"a": ["x", {"b": f"o{RLO}"}]}, "params")
