"""error_codes: every numeric error code is unique and inside its package's range.

Imports every module of every package, walks every `CustodyError` subclass that sets a `code`
and every `*ErrorCode` enum, reads every literal code written into a call (`code=N`) or a JSON
body (`"code": N`), and checks them against `cc_errors.registry`. A failure names the class and
the free codes of its range, so a late collision is a one-line move.
"""

from __future__ import annotations

import ast
import enum
import importlib
import pkgutil
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_errors import CustodyError
from cc_errors.registry import RANGES, SHARED, free_codes, range_for, shared
from custody.errors import api_codes
from custody.openapi_spec import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "cc_errors",
    "wallet_core",
    "cc_common",
    "firmware_sim",
    "hsm_cold",
    "hsm_hot",
    "vdevice",
    "custody",
    "examples",
    "cc_demo",
)
# Entry points run `main()` when imported; migrations need Alembic's runtime context.
SKIP = re.compile(r"(\.__main__$|\.migrations\.)")


def _import_all() -> list[str]:
    names = []
    for top in PACKAGES:
        pkg = importlib.import_module(top)
        names.append(top)
        for info in pkgutil.walk_packages(pkg.__path__, top + "."):
            if SKIP.search(info.name):
                continue
            importlib.import_module(info.name)  # a module that fails to import fails here
            names.append(info.name)
    return names


MODULES = _import_all()


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def error_classes() -> list[tuple[str, int]]:
    """(qualified class name, code) of every error class that sets its own code."""
    found = {CustodyError: int(CustodyError.code)}
    for cls in _subclasses(CustodyError):
        if "code" in cls.__dict__ and isinstance(cls.__dict__["code"], int):
            found[cls] = int(cls.__dict__["code"])
    ours = [(_name(c), code) for c, code in found.items() if c.__module__.split(".")[0] in PACKAGES]
    return sorted(ours, key=lambda item: (item[1], item[0]))


def code_enums() -> list[type[enum.IntEnum]]:
    """The `*ErrorCode` enums: codes sent on the wire, some without a class of their own."""
    found = []
    for module in MODULES:
        for value in vars(importlib.import_module(module)).values():
            if (
                isinstance(value, type)
                and issubclass(value, enum.IntEnum)
                and value.__name__.endswith("ErrorCode")
                and value.__module__ == module
            ):
                found.append(value)
    return found


def _used() -> set[int]:
    return {code for _, code in error_classes()} | {int(m) for e in code_enums() for m in e}


def _move_hint(name: str, module: str) -> str:
    r = range_for(module)
    if r is None:
        return f"add a range for {module} to cc_errors/registry.py RANGES (free block from 1000)"
    free = free_codes(r, _used())
    return f"move it to a free code of {r.owner}'s range {r.first}-{r.last}: {free}"


def test_every_module_imports_and_defines_codes() -> None:
    assert len(MODULES) > 100
    assert len(error_classes()) > 100


def test_ranges_do_not_overlap() -> None:
    for i, a in enumerate(RANGES):
        assert a.first <= a.last, a
        for b in RANGES[i + 1 :]:
            overlap = a.first <= b.last and b.first <= a.last
            assert not overlap, f"ranges of {a.owner} and {b.owner} overlap"


def test_every_class_code_is_in_its_package_range() -> None:
    problems = []
    for name, code in error_classes():
        module = name.rsplit(".", 1)[0]
        share = shared(code)
        if share is not None and name in share.classes:
            continue
        r = range_for(module)
        if r is None or code not in r:
            where = f"outside {r.owner}'s range {r.first}-{r.last}" if r else "in no range"
            problems.append(f"{name} has code {code}, {where}: {_move_hint(name, module)}")
    assert not problems, "\n".join(problems)


def test_no_two_classes_share_a_code() -> None:
    by_code: dict[int, list[str]] = defaultdict(list)
    for name, code in error_classes():
        by_code[code].append(name)
    problems = []
    for code, names in sorted(by_code.items()):
        share = shared(code)
        allowed = share.classes if share is not None else frozenset()
        extra = [n for n in names if n not in allowed]
        if len(names) > 1 and extra:
            # Keep the class whose range holds the code; the others move.
            at_home = [n for n in names if code in (range_for(n.rsplit(".", 1)[0]) or ())]
            keep = next((n for n in names if n in allowed), (at_home or names)[0])
            for name in extra:
                if name == keep:
                    continue
                module = name.rsplit(".", 1)[0]
                problems.append(
                    f"code {code} is used by {name} and {keep}: {_move_hint(name, module)}"
                )
    assert not problems, "\n".join(problems)


def test_shared_codes_name_existing_classes() -> None:
    names = {name for name, _ in error_classes()}
    for s in SHARED:
        missing = s.classes - names
        assert not missing, f"cc_errors.registry SHARED code {s.code} names unknown {missing}"
        for name in s.classes:
            assert dict(error_classes())[name] == s.code, f"{name} no longer has code {s.code}"


def test_wire_code_enums_are_unique_and_in_range() -> None:
    enums = code_enums()
    assert {e.__name__ for e in enums} >= {"LinkErrorCode", "ColdErrorCode"}
    owners: dict[int, str] = {}
    for e in enums:
        r = range_for(e.__module__)
        assert r is not None, f"{e.__module__}.{e.__name__}: no range in cc_errors.registry"
        assert len(set(e)) == len(e.__members__), f"{e.__name__} has aliases (duplicate values)"
        for member in e:
            assert member in r, f"{e.__name__}.{member.name} = {int(member)} outside {r.owner}"
            other = owners.setdefault(int(member), e.__name__)
            assert other == e.__name__, f"{e.__name__}.{member.name} duplicates {other}"
    for name, code in error_classes():
        if code in owners:
            module = name.rsplit(".", 1)[0]
            assert range_for(module) == range_for(
                next(e.__module__ for e in enums if e.__name__ == owners[code])
            ), f"{name} has code {code}, which is {owners[code]}'s: {_move_hint(name, module)}"


def _literal_codes() -> Iterator[tuple[str, int, int]]:
    """(file, line, code) of `code=N` keywords and `"code": N` entries in our sources."""
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg == "code":
                    value = node.value
                elif isinstance(node, ast.Dict):
                    pairs = zip(node.keys, node.values, strict=True)
                    value = next(
                        (v for k, v in pairs if isinstance(k, ast.Constant) and k.value == "code"),
                        None,
                    )
                else:
                    continue
                if isinstance(value, ast.Constant) and isinstance(value.value, int):
                    yield rel, value.lineno, value.value


def test_literal_codes_on_the_wire_are_registered() -> None:
    """A code written as a number (not a class's `code`) must still be one of ours."""
    known = _used()
    found = list(_literal_codes())
    problems = [
        f"{path}:{line}: code {code} is no error class's nor enum's code"
        for path, line, code in found
        if 0 <= code < 10000 and code not in known  # negative: JSON-RPC; 5 digits: Twilio
    ]
    assert not problems, "\n".join(problems)


def test_openapi_lists_every_api_code() -> None:
    schema = SCHEMAS["Error"]["properties"]["code"]
    codes = [code for code, *_ in api_codes()]
    assert schema["enum"] == codes
    assert codes[:3] == [1, 2, 3], "the reference fixes code 3: user_tx_no already accepted"
    for code, _status, name, _meaning in api_codes():
        assert f"{code} {name}" in schema["description"]


DOC = ROOT / "docs" / "error-codes.md"


def test_doc_lists_every_range_and_api_code() -> None:
    text = DOC.read_text()
    for r in RANGES:
        assert f"| {r.first}-{r.last} | `{r.owner}` |" in text, f"{DOC.name}: range of {r.owner}"
    for code, status, name, _meaning in api_codes():
        assert f"| {code} | {status} | `{name}` |" in text, f"{DOC.name}: API code {code}"


@pytest.mark.parametrize("code", sorted({s.code for s in SHARED}))
def test_shared_codes_are_the_api_generic_ones(code: int) -> None:
    assert code in {c for c, *_ in api_codes()}, "a shared code means what the custody API says"
