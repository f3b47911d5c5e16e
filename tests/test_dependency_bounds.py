"""The declared dependency bounds: the lower-bound environment `make test` builds is the one
pyproject.toml declares, and an lm-eval outside the supported range is refused at start-up,
naming both versions, before any request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pytest_evalchemy.core.requirements import declared_range, lm_eval_problem
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import OFFLINE_CONFIG, REPO


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _pinned() -> dict[str, Version]:
    lines = (REPO / "tools" / "lower-bounds.txt").read_text(encoding="utf-8").splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): Version(next(iter(r.specifier)).version) for r in pins}


@pytest.mark.lower_bounds
def test_the_lower_bound_environment_is_the_declared_one() -> None:
    declared, pinned = _declared(), _pinned()
    assert set(pinned) == set(declared), "tools/lower-bounds.txt lists every dependency once"
    for name, requirement in declared.items():
        lower = [s for s in requirement.specifier if s.operator == ">="]
        upper = [s for s in requirement.specifier if s.operator == "<"]
        assert len(lower) == 1, f"{name}: one lower bound"
        assert len(upper) == 1, f"{name}: an upper bound"
        assert Version(lower[0].version) == pinned[name], (
            f"{name}: pyproject.toml says {requirement.specifier}, tools/lower-bounds.txt "
            f"{pinned[name]}"
        )


def test_an_unsupported_lm_eval_is_named_in_one_line() -> None:
    assert lm_eval_problem("0.4.12", ">=0.4.12,<0.5") is None
    assert lm_eval_problem("0.4.13", ">=0.4.12,<0.5") is None
    for version in ("0.4.11", "0.5.0"):
        assert lm_eval_problem(version, ">=0.4.12,<0.5") == (
            f"lm-eval {version} is installed; pytest-evalchemy supports lm-eval >=0.4.12,<0.5: "
            "pip install 'lm-eval[api]>=0.4.12,<0.5'"
        )


@pytest.mark.lower_bounds
@pytest.mark.skipif(
    declared_range("lm-eval") is None, reason="pytest-evalchemy is not installed as a package"
)
def test_the_run_stops_before_any_request_when_lm_eval_does_not_fit(
    tmp_path: Path, make_server
) -> None:
    # An older lm-eval's metadata ahead of the installed one on sys.path: what
    # importlib.metadata sees after `pip install lm-eval==0.4.11 --no-deps`.
    shadow = tmp_path / "shadow" / "lm_eval-0.4.11.dist-info"
    shadow.mkdir(parents=True)
    (shadow / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lm_eval\nVersion: 0.4.11\n", encoding="utf-8"
    )
    srv: EvalchemyTestServer = make_server()
    env = {"PYTHONPATH": f"{shadow.parent}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", f"--evalchemy-endpoint={srv.completions_url}",
            f"--evalchemy-config={OFFLINE_CONFIG}", "-p", "no:cacheprovider",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    supported = declared_range("lm-eval")
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"ERROR: lm-eval 0.4.11 is installed; pytest-evalchemy supports lm-eval {supported}: "
        f"pip install 'lm-eval[api]{supported}'"
    ]
    assert srv.stats()["requests"] == {}
