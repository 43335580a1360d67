"""Docs kept true: every option each command's --help lists appears in docs/cli.md, and the
shared options are spelled the same on every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["init"], ["load"], ["status"], ["bars"], ["emas"], ["refresh"], ["baseline", "capture"], ["baseline", "list"],
            ["baseline", "compare"], ["baseline", "restore"], ["baseline", "drop"], ["demo"], ["bench"], ["db", "start"], ["db", "stop"], ["db", "status"]]


def _help(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "220", "TERMINAL_WIDTH": "220", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "ta_lab2", *args, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_option_is_documented(args: list[str]) -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert f"ta-lab2 {' '.join(args[:1])}" in doc
    options = set(re.findall(r"(--[a-z][a-z0-9-]+)", _help(args))) - {"--help"}
    missing = sorted(o for o in options if o not in doc)
    assert not missing, f"{' '.join(args)}: undocumented options {missing}"


def test_shared_options_have_one_spelling() -> None:
    text = _help(["bars"]) + _help(["load"]) + _help(["status"])
    for bad in ("--db_url", "--dburl", "--log_level", "--dry_run", "--num_processes"):
        assert bad not in text


def _child_help(module: str) -> str:
    env = {**os.environ, "COLUMNS": "220", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("module, runner", [("ta_lab2.bars", "bars"), ("ta_lab2.emas", "emas")])
def test_child_commands_are_documented_and_spelled_like_their_runner(module: str, runner: str) -> None:
    """The runners' child commands (argparse, not Typer) list only documented options, and every
    option they share with their runner command has the same spelling and help text."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    child = _child_help(module)
    options = set(re.findall(r"(--[a-z][a-z0-9-]+)", child)) - {"--help"}
    assert f"python -m {module}" in doc
    section = doc[doc.index(f"python -m {module}"):]
    missing = sorted(o for o in options if o not in section[:1500])
    assert not missing, f"{module}: options missing from its paragraph in docs/cli.md: {missing}"
    from ta_lab2.flags import HELP

    parent = _help([runner])
    flat_child, flat_parent = " ".join(child.split()), " ".join(parent.replace("│", " ").split())
    for flag in sorted(options - {"--summary-json", "--debug"}):  # the two a runner's children alone take
        assert flag in parent, f"{flag}: on {module} but not on ta-lab2 {runner}"
    for flag in sorted(options & set(HELP)):
        assert HELP[flag] in flat_child, flag
    assert HELP["--ids"] in flat_parent  # the same text on both (Typer wraps it in a box)
