"""One command line across tools/: every tool's --help parses, and the flags they share have one name, one
type and one default everywhere (the table "Common flags" in the README lists them)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tiny_training import load_tool
from tsn.cli import usable_cpus

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(path.stem for path in (REPO / "tools").glob("*.py"))

# flag -> what every tool that has it must give: (default, choices, nargs, action kind)
CANONICAL: dict[str, dict] = {
    "--config": {"type": Path},
    "--opt": {"default": [], "action": argparse._AppendAction, "metavar": "KEY=VALUE"},
    "--checkpoint": {"type": Path},
    "--model": {"type": Path},
    "--list": {"type": Path, "nargs": None},
    "--src": {"nargs": None},
    "--out": {"type": Path},
    "--device": {"default": "auto", "choices": ("auto", "cpu", "cuda")},
    "--backend": {"default": "auto", "choices": ("auto", "pyav", "decord", "opencv", "torchcodec")},
    "--no-progress": {"action": argparse._StoreTrueAction},
    "--strict": {"action": argparse._StoreTrueAction},
    "--workers": {"int": True, "default": (usable_cpus(), None)},  # None: the config's data.num_workers
    "--batch-size": {"int": True},
    "--num-segments": {"int": True},
    "--num-clips": {"int": True, "default": (None, 1)},
    "--crops": {"choices": (1, 3, 10), "default": None},
    "--short-side": {"int": True, "default": 256},
}
# old spellings of the flags above, which must not come back
RETIRED = ("--batch", "--segments", "--splits", "--num_segments", "--batch_size", "--progress")


def parsers(name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """The tool's parser and, for tools with modes (benchmark.py), each mode's."""
    parser = load_tool(name).build_parser()
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{name} {mode}", sub) for mode, sub in action.choices.items()]
    return found


@pytest.mark.parametrize("name", TOOLS)
def test_help_parses(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for label, parser in parsers(name):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--help"])
        assert stop.value.code == 0, label
        assert "usage:" in capsys.readouterr().out, label


def _check_int(label: str, flag: str, action: argparse.Action) -> None:
    """An integer flag rejects a negative number and a non-number with argparse's one-line error."""
    assert action.type is not None and action.type is not int, f"{label} {flag}: no range check"
    for bad in ("-1", "x"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            action.type(bad)
    assert action.type("3") == 3


@pytest.mark.parametrize("name", TOOLS)
def test_shared_flags_have_one_name_type_and_default(name: str) -> None:
    for label, parser in parsers(name):
        actions = {option: action for action in parser._actions for option in action.option_strings}
        for retired in RETIRED:
            assert retired not in actions, f"{label}: {retired} is spelled differently everywhere else"
        for flag, expected in CANONICAL.items():
            action = actions.get(flag)
            if action is None:
                continue
            if "type" in expected:
                assert action.type is expected["type"], (label, flag)
            if "nargs" in expected:
                assert action.nargs == expected["nargs"], f"{label} {flag}: one value per flag"
            if "choices" in expected:
                assert tuple(action.choices) == expected["choices"], (label, flag)
            if "action" in expected:
                assert isinstance(action, expected["action"]), (label, flag)
            if "metavar" in expected:
                assert action.metavar == expected["metavar"], (label, flag)
            if "default" in expected:
                allowed = expected["default"] if isinstance(expected["default"], tuple) else (expected["default"],)
                assert action.default in allowed, f"{label} {flag}: default {action.default!r}, expected {allowed}"
            if expected.get("int"):
                _check_int(label, flag, action)


def test_positive_numbers_are_finite() -> None:
    from tsn.cli import positive_float

    assert positive_float("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)


def test_the_readme_lists_the_common_flags() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Common flags", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| `(--[a-z-]+)", section, flags=re.MULTILINE))
    assert listed == set(CANONICAL), sorted(listed ^ set(CANONICAL))
    for flag, expected in CANONICAL.items():  # the choices shown are the parser's
        if "choices" in expected:
            shown = "\\|".join(str(choice) for choice in expected["choices"])
            assert f"| `{flag} {shown}`" in section, flag
