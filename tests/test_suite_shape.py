"""The test suite's own shape: what several test modules need is written once, in
``helpers.py`` (plain functions and constants) or ``conftest.py`` (fixtures), and a test
module never borrows from another test module, so running or editing one alone stays safe."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HELPERS = "helpers.py"


def _trees(folder: Path) -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.py"))}


def _is_test_module(name: str) -> bool:
    return name.startswith("test_")


def borrowed_imports(folder: Path) -> list[str]:
    """``file:line imported`` for each import of a test module from a module of ``folder``."""
    found = []
    for file, tree in _trees(folder).items():
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level and node.module:  # from .test_x import ...
                    names = [node.module]
                elif node.level:  # from . import test_x
                    names = [alias.name for alias in node.names]
                elif node.module and node.module.startswith("tests."):
                    names = [node.module.removeprefix("tests.")]
            elif isinstance(node, ast.Import):
                names = [
                    a.name.removeprefix("tests.") for a in node.names if a.name.startswith("tests.")
                ]
            found += [
                f"{file}:{node.lineno} {n}" for n in names if _is_test_module(n.split(".")[0])
            ]
    return found


def _shape(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    """The definition without its name and docstring: equal shapes do the same thing."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    head = "class" if isinstance(node, ast.ClassDef) else ast.dump(node.args)
    return head + "".join(ast.dump(statement) for statement in body)


def copies(folder: Path) -> list[list[str]]:
    """Groups of ``file:name`` defining the same function or class twice: private ones of the
    test modules and ``conftest.py`` written more than once, or written again beside the
    public one of ``helpers.py``."""
    by_shape: dict[str, list[str]] = defaultdict(list)
    for file, tree in _trees(folder).items():
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            private = node.name.startswith("_")
            shared = file == HELPERS and not private
            own = file != HELPERS and private  # a test module's public functions are its tests
            if shared or own:
                by_shape[_shape(node)].append(f"{file}:{node.name}")
    return [group for group in by_shape.values() if len(group) > 1]


def _is_fixture_or_hook(node: ast.FunctionDef) -> bool:
    decorators = [ast.unparse(d) for d in node.decorator_list]
    return node.name.startswith("pytest_") or any(
        d.startswith("pytest.fixture") for d in decorators
    )


def conftest_helpers(folder: Path) -> list[str]:
    """Top-level functions of ``conftest.py`` that are neither fixtures nor hooks."""
    tree = _trees(folder)["conftest.py"]
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    return [n.name for n in functions if not _is_fixture_or_hook(n)]


def test_no_test_module_imports_from_another() -> None:
    found = borrowed_imports(TESTS)
    assert not found, (
        "test modules import from other test modules (move what they share to tests/helpers.py "
        f"or a fixture in tests/conftest.py): {found}"
    )


def test_no_helper_is_written_twice() -> None:
    found = copies(TESTS)
    assert not found, (
        "the same function is defined more than once (keep one public copy in "
        f"tests/helpers.py and import it): {found}"
    )


def test_conftest_holds_only_fixtures_and_hooks() -> None:
    found = conftest_helpers(TESTS)
    assert not found, f"plain functions in tests/conftest.py belong in tests/helpers.py: {found}"
