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
MAX_FUNCTION_LINES = 80


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


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (N lines)`` for every function or method of a file longer than ``limit``, from ``def`` to its last line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{node.name} (line {node.lineno}, {node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_functions_stay_short(path: Path):
    long = long_functions(path)
    assert not long, f"{path.relative_to(PACKAGE.parent)}: {'; '.join(long)} (at most {MAX_FUNCTION_LINES} lines: split by job)"


def test_the_length_checker_sees_a_long_function(tmp_path):
    fake = tmp_path / "x.py"
    body = "".join(f"        a{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    fake.write_text(f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}")
    assert long_functions(fake) == [f"long (line 6, {MAX_FUNCTION_LINES + 1} lines)"]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (function-local imports included).

    ``from a.b import c`` is an edge to ``a.b.c`` where that is a module of the package, else to
    ``a.b`` (a name defined in ``a/b.py`` or ``a/b/__init__.py``); relative imports are resolved.
    """
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        edges.add(f"{base}.{alias.name}")
                    elif base in files:
                        edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` for each strongly connected group of modules (Tarjan, then BFS)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while not group or member != node:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for group in groups:
        start = min(group)
        came_from, frontier = {start: None}, [start]
        while not any(start in graph[node] for node in frontier):
            reached = []
            for node in frontier:
                for other in sorted(graph[node] & group):
                    if other not in came_from:
                        came_from[other] = node
                        reached.append(other)
            frontier = reached
        path = [next(node for node in frontier if start in graph[node])]
        while came_from[path[-1]] is not None:
            path.append(came_from[path[-1]])
        cycles.append([*reversed(path), start])
    return sorted(cycles)


def test_no_import_cycles_between_files():
    cycles = import_cycles(import_graph())
    assert not cycles, "files that import each other (in a circle): " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_checker_sees_a_cycle(tmp_path):
    """A circle through a lazy import, a relative import and ``from package import submodule`` is found and named."""
    root = tmp_path / "fake"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from fake.sub.b import thing\n")
    (root / "a.py").write_text("def f():\n    from fake.sub import b\n")
    (root / "sub" / "b.py").write_text("from ..c import g\nthing = 1\n")
    (root / "c.py").write_text("import fake.a\n\ndef g():\n    pass\n")
    (root / "d.py").write_text("from fake.sub import thing\n")  # an edge into the package, in no circle
    graph = import_graph(root)
    assert graph["fake.a"] == {"fake.sub.b"} and graph["fake.d"] == {"fake.sub"}
    assert import_cycles(graph) == [["fake.a", "fake.sub.b", "fake.c", "fake.a"]]
    (root / "c.py").write_text("def g():\n    pass\n")
    assert import_cycles(import_graph(root)) == []


def test_readings_live_in_the_book_room():
    """The sentences a chapter prints are in spanlib.book.readings; figures/ draws figures and builds tables."""
    stray = [
        f"{module_name(p)}.{node.name}"
        for p in MODULES
        if room_of(module_name(p)) == "figures"
        for node in ast.parse(p.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef) and node.name.endswith(("_reading", "_verdict", "_lines", "_line"))
    ]
    assert not stray, f"readings outside spanlib/book/readings.py: {stray}"


def test_no_catch_all_modules():
    assert not [p for p in MODULES if p.stem in ("utils", "helpers", "misc", "common")]
