"""The CI gate end to end: real pytest runs (pytester), real lm-eval, real test servers, one
answering 75% of the documents right and one answering 50%, so every score is known."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from pytest_evalchemy.judge.gating import z_for
from pytest_evalchemy.testing.answer_key import AnswerEntry, expected_accuracy, load_answer_key
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    REPO,
    config_option,
    expected,
    offline_task,
    read_run_summary,
    run_evalchemy,
)


@pytest.fixture(scope="module")
def worse_key() -> list[AnswerEntry]:
    """A model that knows every other document: 50% where the usual one has 75%."""
    return load_answer_key(REPO / "benchmarks", known=lambda task, i: i % 2 == 0)


@pytest.fixture(scope="module")
def worse_server(worse_key: list[AnswerEntry]) -> Iterator[EvalchemyTestServer]:
    with EvalchemyTestServer(worse_key) as srv:
        yield srv


def _run(
    pytester: pytest.Pytester, server: EvalchemyTestServer, tasks: dict, *args: str
) -> pytest.RunResult:
    return run_evalchemy(
        pytester, server.completions_url, config_option(pytester.path, tasks), *args
    )


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval in closed form (not through scipy, as the plugin does)."""
    z = z_for(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_smoke_run_fails_on_the_point_value_and_passes_on_the_interval(
    pytester: pytest.Pytester, server: EvalchemyTestServer, answer_key: list[AnswerEntry]
) -> None:
    tasks = {"mini_arc": offline_task("mini_arc", limit=8, thresholds={"acc": {"min": 0.9}})}
    acc = expected(answer_key, "mini_arc", 8)
    # 6 of 8 right: a mean of 0/1 scores, so the Wilson interval (value ± z·stderr would
    # be [0.4292, 1.0708], past 1).
    lo, hi = wilson(6, 8)
    assert (acc, round(lo, 4), round(hi, 4)) == (0.75, 0.4093, 0.9285)

    point = _run(pytester, server, tasks, "--evalchemy-run-id=point", "--junitxml=point.xml")
    point.assert_outcomes(failed=1)
    point.stdout.fnmatch_lines(
        [
            "mini_arc*acc,none*0.7500*0.1637*>= 0.9*FAIL",
            "mini_arc:acc,none threshold: 0.7500 misses >= 0.9 "
            f"(stderr 0.1637, 95% wilson CI [[]{lo:.4f}, {hi:.4f}[]], n=8)",
        ]
    )
    point.stdout.no_fnmatch_line("*Traceback*")

    ci = _run(
        pytester,
        server,
        tasks,
        "--evalchemy-run-id=ci",
        "--evalchemy-gate=ci",
        "--junitxml=ci.xml",
    )
    ci.assert_outcomes(passed=1)
    ci.stdout.fnmatch_lines(["gate: ci at 0.95 confidence"])
    summary = read_run_summary(pytester.path / "results", "ci")
    assert summary["gate"] == {
        "mode": "ci",
        "confidence": 0.95,
        "z": pytest.approx(1.959964),
        "max_drop": 0.02,
        "baseline": None,
        "baseline_run_id": None,
        # The gate says it cannot do its job on 8 samples (closed form in test_statistics).
        "notes": [
            "mini_arc/mini_arc: mini_arc:acc,none threshold: 8 samples cannot fail a model "
            "0.02 beyond >= 0.9 at 95% confidence with 80% power: that needs 2073 samples "
            "(evalchemy plan)"
        ],
    }
    (check,) = summary["tasks"]["mini_arc/mini_arc"]["checks"]
    assert (check["passed"], check["mode"], check["n"]) == (True, "ci", 8)
    assert check["interval"] == pytest.approx([lo, hi])
    assert check["interval_method"] == "wilson"
    # No samples were logged: the aggregation (a mean whose stderr is that of 0/1 scores)
    # told the plugin it is a proportion.
    assert summary["tasks"]["mini_arc/mini_arc"]["intervals"]["mini_arc"]["acc,none"] == {
        "low": pytest.approx(lo),
        "high": pytest.approx(hi),
        "method": "wilson",
        "confidence": 0.95,
    }

    def properties(name: str) -> dict[str, str]:
        root = ET.parse(pytester.path / name).getroot()
        return {p.get("name"): p.get("value") for p in root.iter("property")}

    assert properties("ci.xml")["check:mini_arc:acc,none"] == "pass"
    assert properties("point.xml")["check:mini_arc:acc,none"].startswith(
        "FAIL 0.7500 misses >= 0.9 (stderr 0.1637"
    )
    assert properties("point.xml")["mini_arc:acc,none"] == "0.75"

    # A lower confidence narrows the interval below 0.9: [0.64, 0.84] at 50%.
    assert wilson(6, 8, 0.5)[1] == pytest.approx(0.8379, abs=1e-4)
    _run(
        pytester, server, tasks, "--evalchemy-gate=ci", "--evalchemy-confidence=0.5"
    ).assert_outcomes(failed=1)


def test_baseline_equal_passes_and_a_real_drop_fails(
    pytester: pytest.Pytester,
    server: EvalchemyTestServer,
    worse_server: EvalchemyTestServer,
    worse_key: list[AnswerEntry],
    answer_key: list[AnswerEntry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks = {
        # All 48 documents: 0.75 -> 0.50 is significant (z = 2.59).
        "mini_arc": offline_task("mini_arc", limit=None, metrics=["acc"]),
        # 8 documents: the same drop is within luck (z = 1.0), but more than 0.02.
        "mini_hellaswag": offline_task("mini_hellaswag", limit=8),
        # The config allows this one to drop 0.3.
        "mini_mmlu": offline_task("mini_mmlu", limit=8, max_drop={"acc": 0.3}),
    }
    _run(pytester, server, tasks, "--evalchemy-run-id=base").assert_outcomes(passed=3)
    base_dir = pytester.path / "results" / "base"

    same = _run(
        pytester, server, tasks, "--evalchemy-run-id=same", f"--evalchemy-baseline={base_dir}"
    )
    same.assert_outcomes(passed=3)
    same.stdout.fnmatch_lines(
        [f"gate: point at 0.95 confidence; baseline {base_dir}/*(max drop 0.02)"]
    )
    record = read_run_summary(pytester.path / "results", "same")["tasks"]["mini_arc/mini_arc"]
    # metrics lists acc: acc_norm is not compared with the baseline.
    assert [(c["kind"], c["metric"], c["delta"]) for c in record["checks"]] == [
        ("baseline", "acc,none", 0.0)
    ]
    assert record["higher_is_better"] == {"mini_arc": {"acc": True, "acc_norm": True}}

    worse = {
        t: expected_accuracy(worse_key, t, n)
        for t, n in (("mini_arc", None), ("mini_hellaswag", 8))
    }
    assert worse == {"mini_arc": 0.5, "mini_hellaswag": 0.5}
    assert expected(answer_key, "mini_arc", None) == 0.75
    point = _run(
        pytester,
        worse_server,
        tasks,
        "--evalchemy-run-id=point",
        # A fresh results folder, as a CI job with a downloaded baseline has: the response
        # cache is keyed by model name, and both servers serve the same name.
        "--evalchemy-output=candidate",
        f"--evalchemy-baseline={base_dir}",
    )
    point.assert_outcomes(passed=1, failed=2)
    point.stdout.fnmatch_lines(
        [
            "*mini_arc/mini_arc: 1 of 1 baseline check(s) failed",
            "task*metric*value*stderr*threshold / baseline*verdict",
            "mini_arc*acc,none*0.5000*0.0729*0.7500 - 0.02*FAIL",
            "mini_arc:acc,none baseline: dropped 0.2500 from 0.7500 to 0.5000, more than 0.02 "
            "(two-sample z=2.59, p=0.00478, n=48 vs 48)",
        ]
    )
    statuses = {
        k: v["status"]
        for k, v in read_run_summary(pytester.path / "candidate", "point")["tasks"].items()
    }
    assert statuses == {
        "mini_arc/mini_arc": "failed",
        "mini_hellaswag/mini_hellaswag": "failed",
        "mini_mmlu/mini_mmlu": "passed",
    }

    step_summary = pytester.path / "step_summary.md"
    step_summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    ci = _run(
        pytester,
        worse_server,
        tasks,
        "--evalchemy-run-id=ci",
        "--evalchemy-output=candidate",
        "--evalchemy-gate=ci",
        f"--evalchemy-baseline={base_dir}",
        "--evalchemy-markdown=report.md",
    )
    ci.assert_outcomes(passed=2, failed=1)
    ci.stdout.fnmatch_lines(["markdown: */report.md"])
    hellaswag = read_run_summary(pytester.path / "candidate", "ci")["tasks"][
        "mini_hellaswag/mini_hellaswag"
    ]["checks"]
    assert [c["passed"] for c in hellaswag] == [True, True]
    assert (
        "but not significant at 95% (two-sample z=1.00, p=0.159, n=8 vs 8)"
        in hellaswag[0]["message"]
    )
    # The baseline logged no samples: nothing to pair, and the check says it was unpaired.
    assert hellaswag[0]["pairing"] is None

    markdown = (pytester.path / "report.md").read_text(encoding="utf-8")
    lines = markdown.splitlines()
    assert lines[0] == "## Evalchemy run `ci`: ❌ 1 of 3 item(s) not passed"
    assert lines[2].endswith("gate `ci` at 95% confidence · baseline `base` (max drop 0.02)")
    assert (
        "| mini_arc/mini_arc | failed | acc,none | 0.5000 | [0.3639, 0.6361] wilson | - | 0.7500 "
        "| -0.2500 | - | ❌ FAIL: dropped 0.2500 from 0.7500 to 0.5000, more than 0.02 "
        "(two-sample z=2.59, p=0.00478, n=48 vs 48) |"
    ) in lines
    assert any(
        line.startswith(
            "| mini_mmlu/mini_mmlu | passed | acc,none | 0.5000 | [0.2152, 0.7848] wilson | - "
            "| 0.7500 | -0.2500 | - | ✅ pass"
        )
        for line in lines
    )
    assert step_summary.read_text(encoding="utf-8") == "earlier step\n" + markdown


def test_items_in_one_run_only_and_changed_fewshot_are_reported_not_failed(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    before = {
        "mini_arc": offline_task("mini_arc", limit=4),
        "mini_mmlu": offline_task("mini_mmlu", limit=4),
    }
    _run(pytester, server, before, "--evalchemy-run-id=base").assert_outcomes(passed=2)
    baseline = pytester.path / "results" / "base" / "evalchemy_summary_base.json"

    after = {
        "mini_arc": offline_task("mini_arc", limit=4, num_fewshot=2),
        "mini_gsm8k": offline_task("mini_gsm8k", limit=2),
    }
    result = _run(
        pytester, server, after, "--evalchemy-run-id=now", f"--evalchemy-baseline={baseline}"
    )
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NotLikeForLikeWarning: mini_arc/mini_arc: not like for like with the baseline (base): "
            "num_fewshot 1 -> 2",
            "*evalchemy scores*",
            "note: mini_arc/mini_arc: not like for like with the baseline (base): num_fewshot 1 -> 2",
            "note: mini_mmlu/mini_mmlu: in the baseline only (not in this run)",
            "note: mini_gsm8k/mini_gsm8k: not in the baseline; nothing to compare",
        ]
    )
    summary = read_run_summary(pytester.path / "results", "now")
    assert summary["gate"]["baseline"] == str(baseline)
    power = (
        "baseline: 4 samples cannot tell a drop of 0.02 from luck at 95% confidence with 80% "
        "power: that needs 5945 per run unpaired (evalchemy plan)"
    )
    assert summary["gate"]["notes"] == [
        "mini_arc/mini_arc: not like for like with the baseline (base): num_fewshot 1 -> 2",
        "mini_arc/mini_arc: the baseline logged no samples, so drops are judged by the "
        "two-sample z-test on the stderrs, not paired by document (make the baseline run with "
        "--evalchemy-log-samples)",
        f"mini_arc/mini_arc: mini_arc:acc,none {power}",
        f"mini_arc/mini_arc: mini_arc:acc_norm,none {power}",
        "mini_mmlu/mini_mmlu: in the baseline only (not in this run)",
        "mini_gsm8k/mini_gsm8k: not in the baseline; nothing to compare",
    ]
    assert summary["tasks"]["mini_gsm8k/mini_gsm8k"]["checks"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--evalchemy-gate=bayes",), "*--evalchemy-gate: expected point or ci, got 'bayes'"),
        (
            ("--evalchemy-confidence=95",),
            "*--evalchemy-confidence: expected a number between 0 and 1*",
        ),
        (("--evalchemy-baseline=nowhere",), "*--evalchemy-baseline: *nowhere' does not exist"),
    ],
)
def test_bad_gate_options_are_usage_errors(
    pytester: pytest.Pytester, server: EvalchemyTestServer, args: tuple[str, ...], message: str
) -> None:
    result = _run(pytester, server, {"mini_arc": offline_task("mini_arc")}, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_parallel_workers_each_load_the_baseline(
    pytester: pytest.Pytester, server: EvalchemyTestServer, worse_server: EvalchemyTestServer
) -> None:
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=8),
        "mini_mmlu": offline_task("mini_mmlu", limit=8),
    }
    _run(
        pytester, server, tasks, "--evalchemy-run-id=base", "--evalchemy-log-samples"
    ).assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={worse_server.completions_url}",
        f"--evalchemy-config={pytester.path / 'eval.json'}",
        f"--evalchemy-baseline={pytester.path / 'results' / 'base'}",
        "--evalchemy-run-id=par",
        "--evalchemy-output=candidate",
        "--junitxml=par.xml",
        "-n",
        "2",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*mini_arc:acc,none baseline: dropped 0.2500 from 0.7500 to 0.5000*"]
    )
    junit = (pytester.path / "par.xml").read_text(encoding="utf-8")
    assert '<property name="check:mini_mmlu:acc,none:baseline" value="FAIL dropped 0.2500' in junit
    tasks_out = read_run_summary(pytester.path / "candidate", "par")["tasks"]
    assert {v["status"] for v in tasks_out.values()} == {"failed"}
    # Each worker paired its item with the baseline's samples: of the first 8 documents the
    # usual model knows 0-2 and 4-6, the worse one 0, 2, 4, 6, so 1 and 5 flipped.
    for record in tasks_out.values():
        (check,) = [c for c in record["checks"] if c["metric"] == "acc,none"]
        assert check["pairing"] == {
            "n": 8,
            "right_to_wrong": 2,
            "wrong_to_right": 0,
            "p_value": 0.25,
            "method": "mcnemar-exact",
        }
        assert [f["doc_id"] for f in check["flips"]] == [1, 5]
