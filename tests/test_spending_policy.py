"""The spending policy's rules, shared by the cold HSM and the phone, and the fingerprints."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_common.fingerprint import fingerprint, matches, normalise
from cc_common.spending_policy import (
    DEFAULT_POLICY,
    PolicyFormatError,
    SpendHistory,
    SpendingPolicy,
    approved_request_string,
    judge,
    signed_forms,
)
from wallet_core.chaincloud import send_request_string

A, B = (
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    "bcrt1q9vza2e8x573nczrlzms0wvx3gsqjx7vaxwd45v",
)
NONE = SpendHistory(0, 0, frozenset())


def test_defaults_are_limits_and_documented() -> None:
    p = DEFAULT_POLICY
    assert (p.max_send_sat, p.max_daily_sat, p.max_sends_per_hour) == (25_000_000, 50_000_000, 10)
    assert (p.approval_above_sat, p.loosen_delay) == (20_000_000, 86_400)
    for field in ("max_send_sat", "max_daily_sat", "max_sends_per_hour", "approval_above_sat"):
        with pytest.raises(PolicyFormatError, match="positive"):
            replace(p, **{field: 0})  # no "0 = no limit"
    with pytest.raises(PolicyFormatError, match="loosen_delay"):
        replace(p, loosen_delay=0)


def test_text_form_is_canonical() -> None:
    p = replace(DEFAULT_POLICY, whitelist=(B, A), approve_new_destinations=True)
    assert SpendingPolicy.from_text(p.to_text()) == p == replace(p, whitelist=(A, B, A))
    text = p.to_text()
    first, second = sorted((A, B))
    for bad in (
        text.replace("max_send=", "max_sent="),
        text.replace(f"{first},{second}", f"{second},{first}"),  # unsorted: not canonical
        text.replace("new_dest=1", "new_dest=2"),
        text.replace("max_send=25000000", "max_send=+25000000"),
        text + ";extra=1",
        "max_send=1",
    ):
        with pytest.raises(PolicyFormatError):
            SpendingPolicy.from_text(bad)


def test_what_loosens() -> None:
    p = DEFAULT_POLICY
    assert p.loosens(p) == []
    assert replace(p, max_send_sat=1_000).loosens(p) == []
    assert replace(p, loosen_delay=3_600).loosens(p) == ["loosen_delay"]
    assert replace(p, max_daily_sat=60_000_000).loosens(p) == ["max_daily_sat"]
    listed = replace(p, whitelist=(A,))
    assert listed.loosens(p) == []  # a whitelist only tightens
    assert p.loosens(listed) == ["whitelist"]
    assert replace(p, whitelist=(A, B)).loosens(listed) == ["whitelist"]
    strict = replace(p, approve_new_destinations=True)
    assert p.loosens(strict) == ["approve_new_destinations"]


def test_judge() -> None:
    p = replace(DEFAULT_POLICY, approve_new_destinations=True)
    assert judge(p, [A], 30_000_000, NONE).refusal.startswith("30000000 sat is over the per-send")
    assert "24 h" in judge(p, [A], 10, SpendHistory(50_000_000, 0, frozenset())).refusal
    assert "last hour" in judge(p, [A], 10, SpendHistory(0, 10, frozenset())).refusal
    v = judge(p, [A], 21_000_000, SpendHistory(0, 0, frozenset({A})))
    assert v.refusal is None and v.needs_approval == (
        "21000000 sat is above the approval threshold",
    )
    assert judge(p, [A, B], 10, SpendHistory(0, 0, frozenset({A}))).needs_approval
    assert judge(p, [A], 10, SpendHistory(0, 0, frozenset({A}))).needs_approval == ()
    listed = replace(p, whitelist=(A,))
    assert "not whitelisted" in judge(listed, [B], 10, NONE).refusal


def test_the_approval_sits_inside_the_signed_request() -> None:
    request = send_request_string(f"{A},1000", "order-7")
    plain, approved = signed_forms(request)
    assert plain == request
    assert approved == request.replace(',"user_tx_no"', ',"owner_approved":1,"user_tx_no"')
    assert approved_request_string(request) == approved
    with pytest.raises(PolicyFormatError):
        approved_request_string("not a request")


def test_fingerprints() -> None:
    key = bytes.fromhex("02" + "11" * 32)
    fp = fingerprint(key)
    assert len(fp) == 29 and fp.count("-") == 4
    assert normalise(fp.upper().replace("-", " ")) == fp and matches(key, fp)
    assert normalise("abc") is None and not matches(key, "0" * 25)
    assert fingerprint(bytes.fromhex("03" + "11" * 32)) != fp


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.sampled_from([DEFAULT_POLICY.to_text()]).map(lambda t: t[:-3]))
def test_any_text_parses_or_is_refused_with_the_domain_error(text: str) -> None:
    """What arrives by SMS: a policy or `PolicyFormatError`, never another exception."""
    try:
        policy = SpendingPolicy.from_text(text)
    except PolicyFormatError:
        return
    assert policy.to_text() == text


@given(st.text(max_size=60))
def test_any_typed_fingerprint_normalises_or_is_none(text: str) -> None:
    out = normalise(text)
    assert out is None or (len(out) == 29 and normalise(out) == out)
