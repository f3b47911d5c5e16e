"""Every file the run writes stays where it belongs: a task YAML's name that would leave the
item's folder is refused (in the run and in ``--validate-config``), and any file name made
from a task name stays in its folder all the same; a config's ``output_path`` is judged after
its symbolic links.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.core.samples import item_samples
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .conftest import REPO, offline_task, read_summary, write_config

MINI_ARC = REPO / "benchmarks" / "mini_arc.yaml"
USAGE_ERROR = pytest.ExitCode.USAGE_ERROR


def _run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(f"--evalchemy-endpoint={url}", "-p", "no:cacheprovider", *args)


def _validate(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_evalchemy", "--validate-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text


def _task_yaml(folder: Path, file: str, task: str, extra: str = "") -> Path:
    """A task YAML that is mini_arc under another name (the test server knows its documents)."""
    folder.mkdir(exist_ok=True)
    path = folder / file
    path.write_text(f"include: {MINI_ARC}\ntask: {json.dumps(task)}\n{extra}", encoding="utf-8")
    return path


def _config(root: Path, tasks: dict[str, Any], **extra: Any) -> Path:
    return write_config(root / "eval.json", {"include_paths": ["mytasks"], "tasks": tasks, **extra})


# ---------------------------------------------------------------- task names from YAMLs


def _escaping_name(root: Path, target: Path) -> str:
    """A task name whose samples file ``samples_<task>.jsonl`` in the item's folder under
    ``root`` would be ``target/ESCAPED.jsonl``: enough '..' to climb to / from there."""
    depth = len((root / "results" / "run" / "items" / "b" / "t").parts) + 2
    return "../" * depth + str(target).lstrip("/") + "/ESCAPED"


@pytest.mark.parametrize("how", ["tag", "group"])
@pytest.mark.parametrize("kind", ["escape", "folder"])
def test_a_task_name_that_would_leave_the_item_folder_is_refused_before_any_request(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    tmp_path: Path,
    kind: str,
    how: str,
) -> None:
    srv = make_server()
    outside = tmp_path / "x"
    outside.mkdir()
    name = _escaping_name(pytester.path, outside) if kind == "escape" else "sub/dir_task"
    folder = pytester.path / "mytasks"
    if how == "tag":
        yaml_path = _task_yaml(folder, "bad.yaml", name, "tag: picked\n")
    else:
        yaml_path = _task_yaml(folder, "bad.yaml", name)
        (folder / "picked.yaml").write_text(f"group: picked\ntask:\n  - {json.dumps(name)}\n")
    cfg = _config(pytester.path, {"picked": {"tasks": ["picked"], "limit": 2, "log_samples": True}})
    fix = "tmp_" if kind == "escape" else "sub_dir_task"
    line = (
        f"  {yaml_path}: task: {name!r} cannot name a file: it holds a path separator ('/'), "
        f"and the run writes samples_<task>.jsonl with it (tasks.picked.tasks[0] of {cfg} runs "
        f"it); rename the task in this YAML, e.g. to '{fix}*'"
    ).replace("[", "[[]")  # a pattern: tasks[0] is no character class
    result = _run(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    assert not (pytester.path / "results").exists()
    assert list(outside.iterdir()) == []
    _no_traceback(result)
    done = _validate(pytester.path, cfg)
    assert done.returncode == 4, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"config INVALID: {cfg}: 1 problem"
    assert len(lines) == 2
    assert fnmatch(lines[1], line), lines[1]  # the same words as the run's


def test_a_file_name_made_from_a_task_name_stays_in_the_item_folder(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    """The evalchemy fixture runs what a test asks, outside the config's checks: the samples
    file of a task named 'sub/dir_task' is one file of the item's folder all the same, and
    what reads it back gets the task's name."""
    _task_yaml(pytester.path / "mytasks", "bad.yaml", "sub/dir_task", "tag: picked\n")
    cfg = _config(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)})
    pytester.makepyfile(
        test_api=(
            "def test_picked(evalchemy):\n"
            "    r = evalchemy.run('picked', limit=2, log_samples=True)\n"
            "    assert r.metric('acc', task='sub/dir_task') == 1.0\n"
        )
    )
    result = _run(pytester, server.url, f"--evalchemy-config={cfg}", "test_api.py")
    result.assert_outcomes(passed=2)
    summary = read_summary(pytester.path / "results")
    record = summary["tasks"]["test_picked/picked"]
    run_dir = next((pytester.path / "results").glob("*/evalchemy_summary_*.json")).parent
    item_dir = run_dir / record["item_dir"]
    assert sorted(p.name for p in item_dir.glob("samples_*")) == ["samples_sub%2Fdir_task.jsonl"]
    assert [p for p in pytester.path.rglob("*") if p.name.startswith("samples_sub")] == [
        item_dir / "samples_sub%2Fdir_task.jsonl"
    ]
    assert list(item_samples(run_dir, record)) == ["sub/dir_task"]
    assert len(item_samples(run_dir, record)["sub/dir_task"]) == 2


def test_an_output_path_that_leads_out_through_a_link_is_refused(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], tmp_path: Path
) -> None:
    srv = make_server()
    outside = tmp_path / "outside"
    outside.mkdir()
    (pytester.path / "copies").symlink_to(outside)
    tasks = {"mini_arc": offline_task("mini_arc", limit=2, output_path="copies/arc")}
    cfg = write_config(pytester.path / "eval.json", {"tasks": tasks})
    line = (
        f"  {cfg}: tasks.mini_arc.output_path: 'copies/arc' leads out of the working directory "
        f"{pytester.path} through a symbolic link (to {outside / 'arc'}): use a folder inside it"
    )
    result = _run(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    assert list(outside.iterdir()) == []
    done = _validate(pytester.path, cfg)
    assert done.returncode == 4
    assert done.stderr.splitlines()[1:] == [line]
