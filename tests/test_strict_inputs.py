"""Strict inputs, before any traffic: numeric options with their range and where they came
from, unknown task names and impossible few-shot counts as config errors in the run as in
``--validate-config``, and a limit above a data set's size as a warning. Backs rows of
docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    ARC2,
    REPO,
    assert_no_traceback,
    config_option,
    offline_task,
    read_summary,
    run_evalchemy,
    validate_config,
    write_config,
)

LIMIT_HELP = (
    "expected a number of samples (a whole number >= 1, e.g. 10) or a fraction of the data "
    "set in (0, 1], e.g. 0.1"
)


@pytest.mark.parametrize("value", ["1.5", "0", "-2", "ten", "nan", "inf"])
def test_limit_must_be_a_count_or_a_fraction(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], value: str
) -> None:
    srv = make_server()
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), f"--evalchemy-limit={value}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --evalchemy-limit: {LIMIT_HELP}; got '{value}'"])
    assert srv.stats()["requests"] == {}  # not even the endpoint check
    assert_no_traceback(result)


def test_limit_from_the_ini_file_names_the_file(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    ini = pytester.makeini("[pytest]\nevalchemy_limit = 0\n")
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --evalchemy-limit (from evalchemy_limit in {ini}): {LIMIT_HELP}; got '0'"]
    )
    assert srv.stats()["requests"] == {}


@pytest.mark.parametrize(
    ("arg", "line"),
    [
        (
            "--evalchemy-timeout=nan",
            "ERROR: --evalchemy-timeout: must be at least 0.001, got 'nan'",
        ),
        ("--evalchemy-max-drop=inf", "ERROR: --evalchemy-max-drop: must be at least 0, got 'inf'"),
        (
            "--evalchemy-batch-size=2.5",
            "ERROR: --evalchemy-batch-size: expected a whole number, got '2.5'",
        ),
    ],
    ids=["timeout-nan", "max-drop-inf", "batch-size-fraction"],
)
def test_numeric_options_refuse_what_cannot_be_right(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], arg: str, line: str
) -> None:
    srv = make_server()
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2), arg)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert srv.stats()["requests"] == {}


def test_a_limit_of_a_fraction_or_one_runs(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    tasks = {"mini_arc": offline_task("mini_arc", limit=None)}
    result = run_evalchemy(
        pytester, server.url, config_option(pytester.path, tasks), "--evalchemy-limit=0.05"
    )
    result.assert_outcomes(passed=1)
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["n_samples"]["mini_arc"]["effective"] == 3  # ceil(48 * 0.05)


def test_unknown_task_name_is_a_config_error_before_any_request(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    cfg = write_config(
        pytester.path / "eval.json", {"tasks": {"mini_arc": offline_task("mini_ark")}}
    )
    result = run_evalchemy(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = (
        f"  {cfg}: tasks.mini_arc.tasks[0]: unknown task 'mini_ark': not a task of this config, "
        f"of the include paths ({REPO / 'benchmarks'}) or of lm-eval; did you mean 'mini_arc'?"
    )
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    assert not (pytester.path / "results").exists()  # nothing written
    assert validate_config(cfg).stderr.splitlines()[1] == line  # the same words
    assert_no_traceback(result)


def test_num_fewshot_the_data_cannot_supply_is_a_config_error_in_the_run_and_validate(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    tasks = {
        "mini_arc": offline_task("mini_arc", num_fewshot=48),
        "mini_mmlu": offline_task("mini_mmlu", num_fewshot=47),  # the most it can give
    }
    cfg = write_config(pytester.path / "eval.json", {"tasks": tasks})
    line = (
        f"  {cfg}: tasks.mini_arc.num_fewshot: 48 few-shot examples asked of 'mini_arc', whose "
        f"few-shot source ({REPO / 'benchmarks' / 'mini_arc.yaml'}) can give at most 47 (48 "
        "documents in its 'test' split, less the one being evaluated); lower num_fewshot"
    )
    result = run_evalchemy(pytester, srv.url, f"--evalchemy-config={cfg}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", line])
    assert srv.stats()["requests"] == {}
    done = validate_config(cfg)
    assert done.returncode == 4
    assert done.stderr.splitlines() == [f"config INVALID: {cfg}: 1 problem", line]
    assert_no_traceback(result)


def test_a_limit_above_the_data_set_is_a_warning_in_the_terminal_and_the_summary(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = write_config(
        pytester.path / "eval.json", {"tasks": {"mini_arc": offline_task("mini_arc", limit=100)}}
    )
    warning = (
        f"{cfg}: tasks.mini_arc.limit: limit 100 is above the size of 'mini_arc' (48 documents "
        "in its 'test' split): all 48 are evaluated"
    )
    result = run_evalchemy(
        pytester, server.url, f"--evalchemy-config={cfg}", "--evalchemy-run-id=cfg"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"warning: {warning}"])
    summary = read_summary(pytester.path / "results")
    assert summary["config_warnings"] == [warning]
    assert "all 48 are evaluated" in (pytester.path / "results" / "cfg" / "report.html").read_text()
    # The command line's limit replaces the config's, and is named as the place.
    result = run_evalchemy(
        pytester,
        server.url,
        f"--evalchemy-config={cfg}",
        "--evalchemy-limit=60",
        "--evalchemy-run-id=flag",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "warning: --evalchemy-limit: limit 60 is above the size of 'mini_arc' (48 documents "
            "in its 'test' split): all 48 are evaluated"
        ]
    )
    assert f"warning: {warning}" in validate_config(cfg).stderr.splitlines()


def test_tasks_whose_data_is_not_local_are_not_checked_and_that_is_said(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "eval.json",
        {"tasks": {"arc": {"tasks": ["arc_easy"], "num_fewshot": 100, "limit": 10**6}}},
    )
    done = validate_config(cfg)
    assert done.returncode == 0, done.stderr
    assert (
        "note: num_fewshot and limit not checked against the data of arc_easy: their data is "
        "not local (a hub data set is not downloaded to check it)"
    ) in done.stderr.splitlines()
