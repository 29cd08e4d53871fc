"""Every console command's every option and argument has help text, and the top-level help
speaks to operators (no notes meant for developers)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

import pytest

# Each console script of pyproject.toml, plus the merchant site's (run by the supervisor).
PARSERS = (
    "custody.cli",
    "hsm_hot.cli",
    "hsm_cold.cli",
    "vdevice.cli",
    "firmware_sim.cli",
    "examples.merchant_site.cli",
)
DEVELOPER_WORDS = ("handler", "registered", "raises", "returns a value", "CustodyError")


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    yield f"{path} {name}", action
                yield from walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def missing_help(module: str) -> list[str]:
    parser = importlib.import_module(module).build_parser()
    missing = []
    for path, action in walk(parser, parser.prog):
        if isinstance(action, argparse._SubParsersAction):
            missing.append(f"{path}: sub-command without help")
        elif not action.help or action.help == argparse.SUPPRESS:
            name = "/".join(action.option_strings) or action.dest
            missing.append(f"{path}: {name}")
    return missing


@pytest.mark.parametrize("module", PARSERS)
def test_every_option_and_argument_has_help(module: str) -> None:
    assert missing_help(module) == []


@pytest.mark.parametrize("module", PARSERS)
def test_top_level_help_has_no_developer_notes(module: str) -> None:
    text = importlib.import_module(module).build_parser().format_help()
    assert not [w for w in DEVELOPER_WORDS if w in text], text
