"""Docs kept true: every option each command's --help lists appears in docs/cli.md, and the
shared options are spelled the same on every command."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["init"], ["load"], ["status"], ["bars"], ["emas"], ["refresh"], ["baseline", "capture"], ["baseline", "list"],
            ["baseline", "compare"], ["baseline", "restore"], ["baseline", "drop"], ["demo"], ["bench"], ["db", "start"], ["db", "stop"], ["db", "status"],
            ["db", "psql"]]


def _help(args: list[str]) -> str:
    return _help_of(tuple(args))


@functools.cache  # one interpreter per command: several tests read the same page
def _help_of(args: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "220", "TERMINAL_WIDTH": "220", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "ta_lab2", *args, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_option_is_documented(args: list[str]) -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert f"ta-lab2 {' '.join(args[:1])}" in doc
    options = set(re.findall(r"(--[a-z][a-z0-9-]+)", _help(args))) - {"--help"}
    missing = sorted(o for o in options if o not in doc)
    assert not missing, f"{' '.join(args)}: undocumented options {missing}"


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_reads_like_a_command_line(args: list[str]) -> None:
    """No type labels (<bool>, <str>) and no {name} placeholders: options read --db-url URL."""
    text = _help(args)
    assert not re.search(r"<(bool|str|int|float|path)>|\{[a-z_]+\}", text, re.IGNORECASE), text


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


# --------------------------------------------------------------------------- docs stand alone
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# "spec 06", "issue 3", "decision 70", "decisions 55–61", "issue #4" — the numbering of notes a
# reader does not have; "PEP 485" or "version 3" are fine.
_INTERNAL_NUMBER = re.compile(r"\b(?:spec|issue|decision)s?\s*(?:#|no\.\s*)?\d", re.IGNORECASE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def _anchors(text: str) -> set[str]:
    """The heading anchors GitHub gives a Markdown page: lower case, punctuation other than
    ``-`` and ``_`` removed, each space a ``-``; a repeated anchor gets ``-1``, ``-2``, …"""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rule_matches_github() -> None:
    """The anchor rule the link check relies on, on the kinds of headings the docs use."""
    text = "# A\n## `ta-lab2 bars` — `run.py`\n### Write-time \"what changed\"\n## A\n```\n# not a heading\n```\n"
    assert _anchors(text) == {"a", "ta-lab2-bars--runpy", "write-time-what-changed", "a-1"}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_stand_alone(path: Path) -> None:
    """README.md and docs/*.md point to nothing outside the repository and use no internal
    numbering (spec/issue/decision numbers, §): every rule a user needs is in the docs."""
    text = path.read_text()
    assert "../shared" not in text, f"{path.name} refers to ../shared, which users do not have"
    found = sorted({m.group(0) for m in _INTERNAL_NUMBER.finditer(text)} | ({"§"} if "§" in text else set()))
    assert not found, f"{path.name}: internal numbering {found}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link (and image) points to a file of the repository, and every
    ``#anchor`` to a heading of its target page."""
    bad = []
    for target in _LINK.findall(_prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto: …
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            bad.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not bad, f"{path.name}: " + "; ".join(bad)
