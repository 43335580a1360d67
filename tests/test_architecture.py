"""Layers point one way: every ``ta_lab2`` import under ``src/`` (parsed with ``ast``, function
level imports included) goes to its own group or to a lower layer of the block in
docs/architecture.md, the one place the rule is written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ta_lab2"


def _layers() -> dict[str, tuple[int, str]]:
    """Each name -> (its layer, 0 at the bottom; its group)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    lines = [line.split() for line in block.group(1).strip().splitlines()]
    out: dict[str, tuple[int, str]] = {}
    for depth, groups in enumerate(reversed(lines)):
        for group in groups:
            for name in group.split("+"):
                assert name not in out, f"{name} is placed twice in docs/architecture.md"
                out[name] = (depth, group)
    return out


def _name(module: str) -> str:
    """The layer name of ``ta_lab2.<name>…``: a package or a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported ta_lab2 module) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ta_lab2"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "ta_lab2":
                continue
            if base == "ta_lab2":  # from ta_lab2 import flags / __version__
                found += [(node.lineno, f"ta_lab2.{a.name}" if (PACKAGE / f"{a.name}.py").exists()
                           or (PACKAGE / a.name).is_dir() else "ta_lab2") for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


def test_every_module_is_placed_and_imports_only_downward() -> None:
    layers = _layers()
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        module = module.removesuffix(".__init__") if path.name == "__init__.py" else module
        own = _name(module) if module != "ta_lab2" else "__init__"
        if own not in layers:
            problems.append(f"{path.relative_to(ROOT)}: '{own}' is not placed in docs/architecture.md")
            continue
        depth, group = layers[own]
        for line, target in _imports(path, module):
            other = _name(target)
            if other not in layers:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {target}, which is not placed")
                continue
            their_depth, their_group = layers[other]
            if their_group != group and their_depth >= depth:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {group} imports {target} ({their_group}), "
                                f"which is {'beside' if their_depth == depth else 'above'} it")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from ..cli import app\n    import ta_lab2.runners.run\nfrom . import units\n")
    assert sorted(_imports(source, "ta_lab2.work.x")) == [(2, "ta_lab2.cli"), (3, "ta_lab2.runners.run"),
                                                          (4, "ta_lab2.work")]


def test_the_imports_table_is_the_code() -> None:
    """The table of docs/architecture.md says, for every package, exactly which others it imports
    (the core, the block's last line, aside)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("What each package imports today"):].split("\n\n")[1]
    documented = {}
    for row in table.splitlines()[2:]:
        name, imports = (cell.strip() for cell in row.strip("|").split("|"))
        documented[name.strip("`")] = set() if imports == "—" else {i.strip() for i in imports.split(",")}
    layers = _layers()
    core = {name for name, (depth, _) in layers.items() if depth == 0}
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        module = module.removesuffix(".__init__") if path.name == "__init__.py" else module
        own = _name(module) if module != "ta_lab2" else "__init__"
        if own in core or own in ("scripts", "__main__"):
            continue
        found.setdefault(own, set()).update(_name(t) for _, t in _imports(path, module))
    found = {name: targets - core - {name} for name, targets in found.items()}
    assert documented == found
