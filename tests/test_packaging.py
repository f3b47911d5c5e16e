"""The plugin as a user of another project gets it: the wheel built from this checkout,
installed into a fresh virtual environment (no checkout on its path, no extras), and a small
project of the user's own run with it against the test server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import REPO

pytestmark = pytest.mark.packaging

# The pip of the new environment reads this machine's pip config (index, find-links) and its
# cache like any pip; only where the plugin comes from is ours.
_DROP = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    return {**env, **extra}


def _run(
    cmd: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel of this checkout installed (its bin/)."""
    root = tmp_path_factory.mktemp("packaging")
    dist = root / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        cwd=root,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("pytest_evalchemy-*.whl")
    env_dir = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(env_dir)], cwd=root)
    assert made.returncode == 0, made.stderr
    bin_dir = env_dir / "bin"
    installed = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=root)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield bin_dir
    shutil.rmtree(env_dir, ignore_errors=True)  # ~800 MB


MY_TASK = """\
# A task of the project's own: its data lies next to this file, loaded by my_data.load.
task: my_qa
custom_dataset: !function my_data.load
output_type: multiple_choice
test_split: test
fewshot_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

MY_DATA = """\
import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(**kwargs):
    rows = [json.loads(line) for line in (HERE / "my_qa.jsonl").open() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
"""

HOOK = """

import dataclasses


def pytest_evalchemy_item_request(item, request):
    return dataclasses.replace(request, num_fewshot=0)
"""


def _project(root: Path) -> Path:
    """A user's project: a pyproject naming its config, a task folder, its own tests."""
    project = root / "project"
    tasks = project / "evals" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "my_qa.yaml").write_text(MY_TASK, encoding="utf-8")
    (tasks / "my_data.py").write_text(MY_DATA, encoding="utf-8")
    # The test server answers these documents: they are the offline mini_arc's.
    rows = (REPO / "benchmarks" / "data" / "mini_arc.jsonl").read_text(encoding="utf-8")
    (tasks / "my_qa.jsonl").write_text(rows, encoding="utf-8")
    config = {
        "include_paths": ["tasks"],
        "tasks": {
            "mini_arc": {"tasks": ["mini_arc"], "num_fewshot": 2, "limit": 4, "batch_size": 4},
            "my_qa": {"tasks": ["my_qa"], "num_fewshot": 2, "limit": 4, "batch_size": 4},
        },
    }
    (project / "evals" / "evals.json").write_text(json.dumps(config), encoding="utf-8")
    (project / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nevalchemy_config = "evals/evals.json"\n', encoding="utf-8"
    )
    return project


def test_a_user_project_runs_with_the_installed_wheel(
    venv: Path, tmp_path: Path, server: EvalchemyTestServer
) -> None:
    project = _project(tmp_path)
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "GITHUB_SHA": "feedbeef",
    }

    init = _run([str(venv / "evalchemy"), "init"], cwd=project)
    assert init.returncode == 0, init.stderr
    assert (project / "configs" / "offline_config.json").is_file()
    with (project / "conftest.py").open("a", encoding="utf-8") as fh:
        fh.write(HOOK)  # the project's own hook beside the one init wrote

    # The packaged configs work as they are, from the wheel's offline benchmarks.
    checked = _run(
        [str(venv / "evalchemy"), "--validate-config", "--config", "configs/offline_config.json"],
        cwd=project,
    )
    assert checked.returncode == 0, checked.stderr
    assert "config OK: 4 benchmarks" in checked.stdout

    run = _run(
        [
            str(venv / "pytest"),
            f"--evalchemy-endpoint={server.completions_url}",
            "--evalchemy-run-id=user",
            "-n",
            "2",
        ],
        cwd=project,
        **offline,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = json.loads((project / "results" / "user" / "evalchemy_summary_user.json").read_text())
    tasks = summary["tasks"]
    assert {k: v["status"] for k, v in tasks.items()} == {
        "mini_arc/mini_arc": "passed",
        "my_qa/my_qa": "passed",
    }
    assert {v["settings"]["num_fewshot"] for v in tasks.values()} == {0}  # the project's hook
    assert summary["commit"] == "feedbeef"  # the hook evalchemy init wrote
    assert (
        tasks["my_qa/my_qa"]["metrics"]["my_qa"]["acc,none"]
        == (tasks["mini_arc/mini_arc"]["metrics"]["mini_arc"]["acc,none"])
    )
    # The package came from the wheel, not from this checkout.
    where = _run(
        [str(venv / "python"), "-c", "import pytest_evalchemy; print(pytest_evalchemy.__file__)"],
        cwd=project,
    )
    assert str(venv.parent) in where.stdout

    report = _run(
        [str(venv / "evalchemy"), "report", "results/user", "--out", "user.html"], cwd=project
    )
    assert report.returncode == 0, report.stderr
    assert "my_qa" in (project / "user.html").read_text(encoding="utf-8")

    # No [hf] extra in this environment: one line before the run, exit 4.
    no_hf = _run(
        [
            str(venv / "pytest"),
            f"--evalchemy-endpoint={server.completions_url}",
            f"--evalchemy-tokenizer={project}",
        ],
        cwd=project,
        **offline,
    )
    assert no_hf.returncode == 4, no_hf.stdout + no_hf.stderr
    assert "pip install 'pytest-evalchemy[hf]'" in no_hf.stderr
    assert "Traceback" not in no_hf.stdout + no_hf.stderr
