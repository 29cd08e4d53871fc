"""Text that crosses a boundary: control and bidi characters are refused, or escaped for display.

A right-to-left override or a newline inside an id makes an alert, a log line or an operator's
terminal show something other than what was sent ("order-1\u202egnp.exe", a forged second log
line). So every boundary (HTTP forms and queries, SMS texts, command-line arguments) refuses
them with `UnsafeText`, and whatever still reaches a log or an alert goes through `printable`,
which shows each such character as a visible `\\uXXXX` escape.

Refused: Unicode categories Cc (controls, including tab, CR and LF), Cf (format: the bidi
embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E/U+200F,
zero-width characters), Cs (surrogates), Co (private use), Cn (unassigned), Zl and Zp (line and
paragraph separators).
"""

from __future__ import annotations

import logging
import unicodedata

from cc_common.errors import CustodyError

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UnsafeText(CustodyError):
    """A value holds a control, bidi or other invisible character: refused, nothing changed."""

    code = 101


def is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def first_unsafe(value: str) -> str | None:
    """The first refused character of `value`, or None."""
    if value.isascii() and value.isprintable():  # space to `~`: no refused character there
        return None
    for char in value:
        if is_unsafe(char):
            return char
    return None


def describe(char: str) -> str:
    """`U+202E (RIGHT-TO-LEFT OVERRIDE)`: how an error names a refused character."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def check_text(value: str, what: str) -> str:
    """`value` unchanged, or `UnsafeText` naming the field and the character."""
    char = first_unsafe(value)
    if char is not None:
        raise UnsafeText(f"{what} contains a control or bidi character ({describe(char)}); refused")
    return value


def check_values(value: object, what: str) -> None:
    """`check_text` on every string inside `value` (a JSON-like tree of dicts and lists)."""
    if isinstance(value, str):
        check_text(value, what)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), f"{what} key")
            check_values(item, f"{what}.{key}")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            check_values(item, f"{what}[{n}]")


def printable(value: object) -> str:
    """`str(value)` with every refused character shown as a visible escape (`\\u202e`)."""
    text = str(value)
    if first_unsafe(text) is None:
        return text
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if is_unsafe(c) else c
        for c in text
    )


class SafeTextFilter(logging.Filter):
    """A handler filter that makes every record's message show control and bidi characters
    as escapes, whatever the formatter (text or JSON): the message cannot start a forged line
    or reverse the text after it. A traceback keeps its own newlines (they are ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = printable(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True
