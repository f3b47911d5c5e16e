"""Every file the run writes stays where it belongs, and every path it will write is tried
before any request: a task YAML's name that would leave the item's folder is refused (in the
run and in ``--validate-config``), and any file name made from a task name stays in its
folder all the same; a config's ``output_path`` is judged after its symbolic links; an output
path that cannot be written (``--evalchemy-markdown``, ``--junitxml``, a task's
``output_path``) stops the run with one line, exit status 4, before the endpoint is asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.core.results import output_file_problem, output_folder_problem
from pytest_evalchemy.core.samples import item_samples
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    REPO,
    assert_no_traceback,
    offline_task,
    read_summary,
    run_evalchemy,
    validate_config,
    write_config,
)

MINI_ARC = REPO / "benchmarks" / "mini_arc.yaml"
USAGE_ERROR = pytest.ExitCode.USAGE_ERROR


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
    result = run_evalchemy(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    assert not (pytester.path / "results").exists()
    assert list(outside.iterdir()) == []
    assert_no_traceback(result)
    done = validate_config(cfg, pytester.path)
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
    result = run_evalchemy(pytester, server.url, f"--evalchemy-config={cfg}", "test_api.py")
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
    result = run_evalchemy(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    assert list(outside.iterdir()) == []
    done = validate_config(cfg, pytester.path)
    assert done.returncode == 4
    assert done.stderr.splitlines()[1:] == [line]


# ---------------------------------------------------------------- output paths, before any request


def _case(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str) -> tuple:
    """(arguments, the line) of an output path that cannot be written."""
    a_file = pytester.path / "a_file"
    a_file.write_text("x")
    a_folder = pytester.path / "a_folder"
    a_folder.mkdir()
    fix = "; give a path the run can write"
    under = f"cannot be written: {a_file} is a file, not a folder{fix}"
    if case in ("markdown-under-a-file", "markdown-under-a-file-xdist"):
        path = a_file / "sub.md"
        xdist = ["-n", "2"] if case.endswith("xdist") else []
        return [f"--evalchemy-markdown={path}", *xdist], f"--evalchemy-markdown {path}: {under}"
    if case == "markdown-a-folder":
        return (
            [f"--evalchemy-markdown={a_folder}"],
            f"--evalchemy-markdown {a_folder}: cannot be written: it is a folder, not a file{fix}",
        )
    if case == "markdown-from-the-environment":
        path = a_file / "sub.md"
        monkeypatch.setenv("EVALCHEMY_MARKDOWN", str(path))
        where = "--evalchemy-markdown (from the environment variable EVALCHEMY_MARKDOWN)"
        return [], f"{where} {path}: {under}"
    if case == "step-summary-under-a-file":
        path = a_file / "summary.md"
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
        where = "$GITHUB_STEP_SUMMARY (the Markdown summary is appended to it)"
        return [f"--evalchemy-markdown={pytester.path / 'ok.md'}"], f"{where} {path}: {under}"
    if case == "junitxml-under-a-file":
        path = a_file / "sub.xml"
        return [f"--junitxml={path}"], f"--junitxml {path}: {under}"
    assert case == "output-path-under-a-file"
    return (
        ["output_path"],
        f"tasks.mini_arc.output_path of {pytester.path / 'eval.json'} {a_file / 'copies'}: "
        f"no copy can be written there: {a_file} is a file, not a folder{fix}",
    )


CASES = [
    "markdown-under-a-file",
    "markdown-under-a-file-xdist",  # the controller checks, before its workers start
    "markdown-a-folder",
    "markdown-from-the-environment",
    "step-summary-under-a-file",
    "junitxml-under-a-file",
    "output-path-under-a-file",
]


@pytest.mark.parametrize("case", CASES)
def test_an_output_path_that_cannot_be_written_stops_the_run_before_any_request(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    # Tests run as root, which writes through any permission bits: a path under a regular
    # file, or a folder where a file is expected, cannot be written by anyone.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("EVALCHEMY_MARKDOWN", raising=False)
    srv = make_server()
    args, line = _case(pytester, monkeypatch, case)
    task = offline_task("mini_arc", limit=2)
    if args == ["output_path"]:
        args, task = [], {**task, "output_path": "a_file/copies"}
    cfg = write_config(pytester.path / "eval.json", {"tasks": {"mini_arc": task}})
    result = run_evalchemy(pytester, srv.url, f"--evalchemy-config={cfg}", *args)
    assert result.ret == USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: evalchemy: {line}"])
    assert srv.stats()["requests"] == {}  # not even the endpoint check
    assert not (pytester.path / "results").exists()
    assert not (pytester.path / "ok.md").exists()
    assert_no_traceback(result)


def test_output_paths_in_folders_not_made_yet_are_written(
    pytester: pytest.Pytester, server: EvalchemyTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    cfg = write_config(
        pytester.path / "eval.json", {"tasks": {"mini_arc": offline_task("mini_arc", limit=2)}}
    )
    markdown = pytester.path / "new" / "md" / "scores.md"
    xml = pytester.path / "new" / "xml" / "junit.xml"
    result = run_evalchemy(
        pytester,
        server.url,
        f"--evalchemy-config={cfg}",
        f"--evalchemy-markdown={markdown}",
        f"--junitxml={xml}",
    )
    result.assert_outcomes(passed=1)
    assert "mini_arc" in markdown.read_text(encoding="utf-8")
    assert "mini_arc" in xml.read_text(encoding="utf-8")
    assert not list(pytester.path.rglob(".evalchemy-write-check*"))


def test_trying_an_output_path_leaves_it_as_it_was(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b" / "c.md"
    assert output_file_problem(new) is None
    assert list(tmp_path.iterdir()) == []  # the folders made to try are gone again
    kept = tmp_path / "kept.md"
    kept.write_text("earlier step\n")
    assert output_file_problem(kept) is None
    assert kept.read_text() == "earlier step\n"
    assert output_folder_problem(tmp_path / "d" / "e") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.md"]
    assert output_folder_problem(kept) == "it is a file, not a folder"
