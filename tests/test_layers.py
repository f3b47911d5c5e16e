"""The package's layers: every import of a module of the package (at the top, in a function or
under TYPE_CHECKING) goes to its own layer or one below, and the imports have no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_evalchemy

PACKAGE = Path(pytest_evalchemy.__file__).resolve().parent
NAME = "pytest_evalchemy"

# Bottom to top. A module may import its own layer and those before it. The test helpers
# (``pytest_evalchemy.testing``: the test server renders chat prompts as vLLM does) come last:
# nothing of the plugin imports them.
LAYERS = ["core", "judge", "run", "report", "glue", "cli", "testing"]
# The modules at the top of the package are the public names: the hooks of a run (which the
# pytest11 entry point, glue/entry.py, registers) and the hook specifications belong to the
# glue, ``python -m pytest_evalchemy`` to the front end.
TOP_LEVEL = {"__init__": "core", "hookspecs": "glue", "plugin": "glue", "__main__": "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([NAME, *parts])


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(
    name: str, path: Path, known: set[str], missing: list[str] | None = None
) -> set[str]:
    """The package's modules that ``name`` imports, relative imports resolved; an import of
    the package that names no module of it goes to ``missing``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from . import x`` names a module; ``from .m import x`` names a value of m.
            targets = [f"{stem}.{alias.name}" for alias in node.names]
            targets = [t if t in known else stem for t in targets]
        else:
            continue
        for target in targets:
            if target in known:
                if target != name:
                    found.add(target)
            elif missing is not None and (target == NAME or target.startswith(f"{NAME}.")):
                missing.append(f"{name} imports {target}")
    return found


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return TOP_LEVEL["__init__"]
    return parts[1] if parts[1] in LAYERS else TOP_LEVEL[parts[1]]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_the_walk_sees_the_imports() -> None:
    # The checks below mean nothing if the walk finds no edges: the plugin imports the glue.
    edges = graph()
    assert f"{NAME}.glue.options" in edges[f"{NAME}.plugin"]
    assert f"{NAME}.run.tasks.index" in edges[f"{NAME}.run.harness"]
    assert all(layer(m) in LAYERS for m in edges)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = [
        f"{name} ({layer(name)}) imports {target} ({layer(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if LAYERS.index(layer(target)) > LAYERS.index(layer(name))
    ]
    assert wrong == []


def test_every_import_of_the_package_names_one_of_its_modules() -> None:
    # A lazy import of a module that moved fails only when its function runs: find it here.
    found = modules()
    missing: list[str] = []
    for name, path in found.items():
        imports_of(name, path, set(found), missing)
    assert missing == []


def test_the_testing_helpers_need_no_pytest_glue() -> None:
    # A user's conftest imports pytest_evalchemy.testing without loading the plugin.
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if layer(name) == "testing"
        for target in targets
        if layer(target) not in ("core", "run", "testing")
    ]
    assert wrong == []


def test_the_report_reads_core_and_judge_not_run() -> None:
    # A report is made from a summary and a run folder (``evalchemy report`` reads them long
    # after the run), so it needs nothing of how an item was run.
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if layer(name) == "report"
        for target in sorted(targets)
        if layer(target) == "run"
    ]
    assert wrong == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle() -> None:
    assert find_cycle(graph()) is None


def test_the_circle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
