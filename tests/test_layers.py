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
    assert f"{NAME}.run.lmeval.task_index" in edges[f"{NAME}.run.lmeval.harness"]
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
        if layer(target) not in ("core", "judge", "run", "testing")
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


# ---------------------------------------------------------------- the seam to lm-eval

SEAM = f"{NAME}.run.lmeval"
# The one module below the glue that writes os.environ: the switches lm-eval's libraries read
# only from there (progress bars, advisories). A child process's environment is a dict of its
# own (run/serve.py) and is no write to os.environ.
ENVIRONMENT_WRITER = f"{SEAM}.switches"
BELOW_GLUE = ("core", "judge", "run", "report")
_IMPORT_CALLS = {"import_module", "__import__"}
_ENVIRON_CHANGES = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _is_lm_eval(name: str | None) -> bool:
    return name is not None and (name == "lm_eval" or name.startswith("lm_eval."))


def lm_eval_imports(tree: ast.AST) -> list[int]:
    """The lines of ``tree`` that import lm-eval: import statements and importlib calls."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = any(_is_lm_eval(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found = node.level == 0 and _is_lm_eval(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0] if node.args else None
            found = (
                called in _IMPORT_CALLS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _is_lm_eval(first.value)
            )
        else:
            continue
        if found:
            lines.append(node.lineno)
    return lines


def _is_environ(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def environment_writes(tree: ast.AST) -> list[int]:
    """The lines of ``tree`` that change os.environ (item assignment or deletion, its changing
    methods, os.putenv / os.unsetenv)."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in _ENVIRON_CHANGES and _is_environ(func.value)) or (
                func.attr in ("putenv", "unsetenv")
                and isinstance(func.value, ast.Name)
                and func.value.id == "os"
            ):
                lines.append(node.lineno)
    return lines


def _parsed() -> dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in modules().items()}


def test_only_the_seam_imports_lm_eval() -> None:
    wrong = [
        f"{name}:{line} imports lm_eval (only {SEAM} may: add a function there)"
        for name, tree in _parsed().items()
        if name != SEAM and not name.startswith(f"{SEAM}.")
        for line in lm_eval_imports(tree)
    ]
    assert wrong == []


def test_no_module_below_the_glue_writes_the_environment() -> None:
    # A value set in os.environ for another module to read is a side channel: hand it over.
    wrong = [
        f"{name}:{line} changes os.environ"
        for name, tree in _parsed().items()
        if layer(name) in BELOW_GLUE and name != ENVIRONMENT_WRITER
        for line in environment_writes(tree)
    ]
    assert wrong == []


def test_the_seam_rules_see_what_they_forbid() -> None:
    # The two rules above mean nothing if their walks miss the forms they forbid.
    code = (
        "import lm_eval\nfrom lm_eval.tasks import TaskManager\nimport importlib\n"
        "importlib.import_module('lm_eval.models')\nfrom .lm_eval import x\nimport lm_evalx\n"
    )
    assert sorted(lm_eval_imports(ast.parse(code))) == [1, 2, 4]
    code = (
        "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '1')\n"
        "del os.environ['A']\nos.environ.pop('B', None)\nos.putenv('C', '1')\n"
        "env = dict(os.environ)\nenv['D'] = '1'\nos.environ.get('E')\n"
    )
    assert sorted(environment_writes(ast.parse(code))) == [2, 3, 4, 5, 6]
    assert ENVIRONMENT_WRITER in modules()
