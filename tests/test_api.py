"""The ``evalchemy`` fixture and the plugin's hooks, through real pytest runs (pytester)."""

from __future__ import annotations

import pytest

from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import config_option, expected, offline_task, read_summary

USER_TESTS = """
import pytest

def test_arc_beats_baseline(evalchemy):
    r = evalchemy.run("mini_arc", num_fewshot=1, limit=8, log_samples=True)
    assert r.metric("acc") > 0.6
    assert r.metric("acc") == r.metric("acc,none") == r.metrics["mini_arc"]["acc,none"]
    assert r.stderr("acc") > 0
    # 6 of 8 right: the Wilson interval (closed form), at the gate's confidence and another.
    assert r.interval("acc") == pytest.approx((0.409275, 0.928521), abs=1e-6)
    assert r.interval("acc", confidence=0.5) == pytest.approx((0.635208, 0.837888), abs=1e-6)
    assert (r.path / "samples_mini_arc.jsonl").is_file()
    assert r.path.parent.parent.parent == evalchemy.results_dir

def test_two_runs_and_an_assertion_that_fails(evalchemy):
    evalchemy.run("mini_mmlu", num_fewshot=0, limit=4, name="zero_shot")
    r = evalchemy.run("mini_mmlu", num_fewshot=1, limit=4)
    assert r.metric("acc") > 0.9

def test_bad_argument(evalchemy):
    evalchemy.run("mini_arc", num_fewshot="five")
"""


def test_run_from_a_test_beside_config_items(
    pytester: pytest.Pytester, server: EvalchemyTestServer, answer_key: list[AnswerEntry]
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, {"mini_gsm8k": offline_task("mini_gsm8k", limit=4)}),
        "test_user.py",
        "--junitxml=junit.xml",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*evalchemy.run(): tasks.mini_arc.num_fewshot: expected integer or null*",
            "*test_arc_beats_baseline*mini_arc*acc,none*0.7500 [[]0.*, 0.*[]]*passed*",
            "report: *report.html",
        ]
    )
    tasks = read_summary(pytester.path / "results")["tasks"]
    # Config items first (config order), then the tests' runs by key: the same under xdist.
    assert list(tasks) == [
        "mini_gsm8k/mini_gsm8k",
        "test_arc_beats_baseline/mini_arc",
        "test_two_runs_and_an_assertion_that_fails/mini_mmlu",
        "test_two_runs_and_an_assertion_that_fails/zero_shot",
    ]
    arc = tasks["test_arc_beats_baseline/mini_arc"]
    assert arc["status"] == "passed"
    assert arc["nodeid"] == "test_user.py::test_arc_beats_baseline"
    assert arc["metrics"]["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 8)
    assert arc["settings"]["num_fewshot"] == 1
    assert arc["n_samples"]["mini_arc"]["effective"] == 8
    assert arc["endpoint"] == server.completions_url
    # The runs passed their checks, the test's own assertion did not: each run of the test
    # says so (which run an assertion was about is the test's business).
    for name, shots in (("mini_mmlu", 1), ("zero_shot", 0)):
        failing = tasks[f"test_two_runs_and_an_assertion_that_fails/{name}"]
        assert failing["status"] == "failed"
        assert failing["message"].startswith("the test failed: AssertionError: assert 0.75 > 0.9")
        assert failing["settings"]["num_fewshot"] == shots
    run = next((pytester.path / "results").glob("*/report.html")).parent
    assert (run / "items/test_arc_beats_baseline/mini_arc/results.json").is_file()
    assert (run / "test_arc_beats_baseline_results.json").is_file()
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="mini_arc:acc,none" value="0.75"' in junit


def test_run_under_xdist(
    pytester: pytest.Pytester, server: EvalchemyTestServer, answer_key: list[AnswerEntry]
) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.parametrize("task", ["mini_arc", "mini_hellaswag"])
        def test_task(evalchemy, task):
            assert evalchemy.run(task, limit=4).metric("acc") == 0.75
        """
    )
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, {"mini_mmlu": offline_task("mini_mmlu", limit=4)}),
        "test_user.py",
        "-n",
        "2",
    )
    result.assert_outcomes(passed=3)
    tasks = read_summary(pytester.path / "results")["tasks"]
    assert {k: v["status"] for k, v in tasks.items()} == {
        "mini_mmlu/mini_mmlu": "passed",
        "test_task[mini_arc]/mini_arc": "passed",
        "test_task[mini_hellaswag]/mini_hellaswag": "passed",
    }
    assert tasks["test_task[mini_arc]/mini_arc"]["metrics"]["mini_arc"]["acc,none"] == expected(
        answer_key, "mini_arc", 4
    )


def test_hooks_change_the_request_and_the_summary(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    pytester.makeconftest(
        """
        import dataclasses

        def pytest_evalchemy_item_request(item, request):
            if "mini_arc" in request.tasks:
                return dataclasses.replace(request, limit=2)

        def pytest_evalchemy_summary(config, summary):
            return {"built_by": "conftest", **summary}

        def pytest_evalchemy_update_summary(config, summary):
            summary["commit"] = "abc123"
        """
    )
    pytester.makepyfile(
        test_user="""
        def test_api(evalchemy):
            assert evalchemy.run("mini_arc", limit=8).n_samples["mini_arc"]["effective"] == 2
        """
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(
            pytester.path,
            {"mini_arc": offline_task("mini_arc"), "mini_mmlu": offline_task("mini_mmlu", limit=4)},
        ),
        "test_user.py",
        "--evalchemy-no-report",
    )
    result.assert_outcomes(passed=3)
    summary = read_summary(pytester.path / "results")
    assert summary["built_by"] == "conftest"
    assert summary["commit"] == "abc123"
    assert summary["finished_at"]
    tasks = summary["tasks"]
    for key in ("mini_arc/mini_arc", "test_api/mini_arc"):
        assert tasks[key]["n_samples"]["mini_arc"]["effective"] == 2, key
        assert tasks[key]["settings"]["limit"] == 2, key  # the record says what ran
    assert tasks["mini_mmlu/mini_mmlu"]["n_samples"]["mini_mmlu"]["effective"] == 4
    assert not list((pytester.path / "results").glob("*/report.html"))


def test_without_an_endpoint_the_fixture_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        def test_api(evalchemy):
            evalchemy.run("mini_arc")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*evalchemy: no --evalchemy-endpoint or --evalchemy-serve given"])
