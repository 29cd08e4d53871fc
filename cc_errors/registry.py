"""Which numeric error codes each package may use.

Codes cross process boundaries (custody's HTTP error bodies, the hot HSM's RPC, refusals on the
serial link, the simulator's control socket) and clients switch on them, so two failures must
never share a code and a code never changes meaning. Each package owns a range; a class's code
lies in the range of the module that defines it (the longest matching prefix below), unless it
is one of the `SHARED` uses of a code.
`tests/test_error_codes.py` imports every module, walks every `CustodyError` subclass and every
`*ErrorCode` enum, and fails on a duplicate or an out-of-range code, naming what to move.

Codes 1-9 are the custody API's generic answers; the merchant site answers with the same
codes for the same failures (`SHARED`), so a V-device reads both services alike.

Not ours, never checked here: Bitcoin Core's JSON-RPC codes (negative), Twilio's error codes
(five digits) and the `+CMS ERROR` result codes of 3GPP TS 27.005.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeRange:
    """Codes `first`..`last` (inclusive) belong to modules under `owner`."""

    owner: str
    first: int
    last: int
    what: str

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.first <= code <= self.last


# Roomy on purpose: packages add failures often; a new package takes a free block from 1000 up.
RANGES: tuple[CodeRange, ...] = (
    CodeRange("custody.errors", 1, 99, "custody HTTP API (1-9 generic, shared with the site)"),
    CodeRange("cc_common", 100, 199, "shared process plumbing: configuration, pairing files"),
    CodeRange("examples.merchant_site", 200, 299, "merchant site HTTP API (beyond 1-9)"),
    CodeRange("cc_common.link", 300, 349, "serial link between the HSMs"),
    CodeRange("custody.chain", 350, 399, "custody's Bitcoin node client"),
    CodeRange("cc_common.token", 400, 449, "PKCS#11 token layer"),
    CodeRange("firmware_sim", 450, 499, "simulated hardware (control socket)"),
    CodeRange("wallet_core", 500, 599, "wallet core (keys, addresses, PSBT, coin selection)"),
    CodeRange("custody", 600, 699, "custody internals (hot HSM client, send worker, supervisor)"),
    CodeRange("hsm_cold", 700, 799, "cold HSM refusals (cross the link and the hot HSM's RPC)"),
    CodeRange("cc_common.sms", 800, 849, "SMS stack (modems, channel messages)"),
    CodeRange("cc_common.vtest", 850, 859, "vtest encryption"),
    CodeRange("vdevice", 860, 899, "V-device"),
    CodeRange("hsm_hot", 900, 999, "hot HSM refusals (cross its RPC to custody)"),
)


@dataclass(frozen=True)
class SharedCode:
    """A code that several classes answer with on purpose, all with one meaning."""

    code: int
    meaning: str
    classes: frozenset[str]


def _shared(code: int, meaning: str, *classes: str) -> SharedCode:
    return SharedCode(code, meaning, frozenset(classes))


SHARED: tuple[SharedCode, ...] = (
    _shared(
        1,
        "internal error",
        "cc_errors.CustodyError",
        "custody.errors.InternalError",
        "examples.merchant_site.errors.InternalError",
    ),
    _shared(
        2,
        "bad request",
        "custody.errors.ApiError",
        "custody.errors.BadRequest",
        "examples.merchant_site.errors.SiteError",
        "examples.merchant_site.errors.BadRequest",
    ),
    _shared(
        4,
        "missing or unknown token",
        "custody.errors.Unauthorized",
        "examples.merchant_site.errors.Unauthorized",
    ),
    _shared(
        5,
        "not allowed for this token",
        "custody.errors.Forbidden",
        "examples.merchant_site.errors.Forbidden",
    ),
    _shared(6, "not found", "custody.errors.NotFound", "examples.merchant_site.errors.NotFound"),
    _shared(7, "conflict", "custody.errors.Conflict", "examples.merchant_site.errors.Conflict"),
)


def range_for(module: str) -> CodeRange | None:
    """The range of the module `module` (dotted name): its longest matching owner."""
    best: CodeRange | None = None
    for r in RANGES:
        if (module == r.owner or module.startswith(r.owner + ".")) and (
            best is None or len(r.owner) > len(best.owner)
        ):
            best = r
    return best


def shared(code: int) -> SharedCode | None:
    """The shared use of `code`, if several classes may answer with it."""
    return next((s for s in SHARED if s.code == code), None)


def free_codes(r: CodeRange, used: set[int], count: int = 3) -> list[int]:
    """The first `count` codes of `r` that nothing uses (for a failure message)."""
    return [c for c in range(r.first, r.last + 1) if c not in used][:count]
