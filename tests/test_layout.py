"""The library's rooms import only rooms below them (issue: the redesign of spanlib).

Read from the source with ``ast``, lazy imports inside functions included, so
the rules in README's layout section stay true as code is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spanlib"

# Bottom to top. A module may import its own room and any room of a lower rank.
RANK = {
    "core": 0,
    "data": 1,
    "model": 2,
    "maps": 3,
    "pretrain": 4,
    "eval": 5,
    "figures": 6,
    "byol": 7,
    "attention_study": 7,
    "bench": 8,
    "book": 9,
    "roof": 10,  # spanlib/cli.py and __main__.py: the command line's dispatcher
    "__init__": 0,
    "presets": 0,
}
MAX_LINES = 500


def room_of(dotted: str) -> str:
    parts = dotted.split(".")
    room = parts[1] if len(parts) > 1 else "__init__"
    return "roof" if room in ("cli", "__main__") else room


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def spanlib_imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of spanlib in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, package_dir).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "spanlib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "spanlib":
                continue
            if base == "spanlib":  # from spanlib import X: X is a room or module of the top level
                found += [(node.lineno, f"spanlib.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_known_room():
    unknown = {module_name(p) for p in MODULES if room_of(module_name(p)) not in RANK}
    assert not unknown, f"modules outside the rooms of the layout: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_downward_only(path: Path):
    own = room_of(module_name(path))
    bad = []
    for line, target in spanlib_imports(path):
        other = room_of(target)
        if other == own:
            continue
        if other not in RANK:
            bad.append(f"line {line}: {target} is in no known room")
        elif RANK[other] >= RANK[own]:
            bad.append(f"line {line}: {own} imports {target} ({other} is not below {own})")
    assert not bad, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(bad)


def test_only_notebooks_and_the_dispatcher_import_book():
    offenders = [
        f"{module_name(p)} line {line}"
        for p in MODULES
        if room_of(module_name(p)) not in ("book", "roof")
        for line, target in spanlib_imports(p)
        if room_of(target) == "book"
    ]
    assert not offenders, f"only notebooks import spanlib.book: {offenders}"


def test_the_rule_checker_sees_a_violation(tmp_path):
    """The checker is not vacuous: upward imports in a lower room are found, lazy or relative."""
    fake = tmp_path / "spanlib" / "core" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from spanlib.pretrain import train\n    from ..figures import style\n    import spanlib.book.runs\n")
    found = [target for _, target in spanlib_imports(fake, tmp_path / "spanlib")]
    assert found == ["spanlib.pretrain", "spanlib.figures", "spanlib.book.runs"]
    assert all(RANK[room_of(t)] > RANK["core"] for t in found)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_stay_small(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES}: split it by job)"


def test_no_catch_all_modules():
    assert not [p for p in MODULES if p.stem in ("utils", "helpers", "misc", "common")]
