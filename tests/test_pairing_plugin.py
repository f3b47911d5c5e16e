"""Drops paired with the baseline, end to end: real pytest runs (pytester), real lm-eval, and
test servers whose simulated models differ from the usual one on known documents, so every
flip, count and p-value is known in advance."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.cli.report import make_report
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    check_summary,
    config_option,
    offline_task,
    read_run_summary,
    run_evalchemy,
    sem,
)

# The usual model answers documents 3, 7, 11, ... wrong (36 of mini_arc's 48 right).
# DROP: six documents it had right are now wrong (30 of 48).
DROP = ["mini_arc:0,mini_arc:1,mini_arc:2,mini_arc:4,mini_arc:5,mini_arc:6"]
# MIXED: three right ones wrong, one wrong one (doc 3) right (34 of 48).
MIXED = ["mini_arc:0,mini_arc:1,mini_arc:2,mini_arc:3"]
TASKS = {"mini_arc": offline_task("mini_arc", limit=None, metrics=["acc"])}


@pytest.fixture(scope="module")
def drop_server(answer_key: list[AnswerEntry]) -> Iterator[EvalchemyTestServer]:
    with EvalchemyTestServer(answer_key, flip=DROP) as srv:
        yield srv


@pytest.fixture(scope="module")
def mixed_server(answer_key: list[AnswerEntry]) -> Iterator[EvalchemyTestServer]:
    with EvalchemyTestServer(answer_key, flip=MIXED) as srv:
        yield srv


def _run(
    pytester: pytest.Pytester,
    server: EvalchemyTestServer,
    run_id: str,
    *args: str,
    tasks: dict[str, Any] = TASKS,
) -> pytest.RunResult:
    return run_evalchemy(
        pytester,
        server.completions_url,
        config_option(pytester.path, tasks),
        f"--evalchemy-run-id={run_id}",
        *args,
    )


def _record(pytester: pytest.Pytester, run_id: str) -> dict[str, Any]:
    return read_run_summary(pytester.path / "results", run_id)["tasks"]["mini_arc/mini_arc"]


def _two_sample_p(base: float, now: float, n: int) -> float:
    from statistics import NormalDist

    return 1 - NormalDist().cdf((base - now) / math.hypot(sem(base, n), sem(now, n)))


def _baseline_check(record: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in record["checks"] if c["kind"] == "baseline"]
    return check


def test_paired_test_finds_the_drop_the_two_sample_test_misses(
    pytester: pytest.Pytester, server: EvalchemyTestServer, drop_server: EvalchemyTestServer
) -> None:
    # Two baselines of the same model: one logged its samples, one did not.
    _run(pytester, server, "base", "--evalchemy-log-samples").assert_outcomes(passed=1)
    _run(pytester, server, "base_plain").assert_outcomes(passed=1)
    base_dir = pytester.path / "results" / "base"
    assert (base_dir / "items/mini_arc/mini_arc/samples_mini_arc.jsonl").is_file()
    assert not list(
        (pytester.path / "results/base_plain/items/mini_arc/mini_arc").glob("samples_*")
    )
    unpaired_p = _two_sample_p(0.75, 0.625, 48)
    assert round(unpaired_p, 4) == 0.0935  # z = 1.32: not significant at 95%

    paired = _run(
        pytester,
        drop_server,
        "paired",
        "--evalchemy-gate=ci",
        f"--evalchemy-baseline={base_dir}",
        "--evalchemy-markdown=paired.md",
    )
    paired.assert_outcomes(failed=1)
    summary = json.loads(
        (pytester.path / "results/paired/evalchemy_summary_paired.json").read_text()
    )
    assert _baseline_check(check_summary(summary)["tasks"]["mini_arc/mini_arc"])["pairing"]
    paired.stdout.fnmatch_lines(
        [
            "mini_arc:acc,none baseline: dropped 0.1250 from 0.7500 to 0.6250, more than 0.02 "
            "(paired: 6 right→wrong, 0 wrong→right of 48, mcnemar-exact p=0.0156, "
            "two-sample z=1.32, p=0.0935, n=48 vs 48)",
            "  paired on 48 documents: 6 right→wrong, 0 wrong→right, mcnemar-exact p=0.01562",
            "    doc 0 (right→wrong): target 'water vapor in the surrounding air', was 'water "
            "vapor in the surrounding air', now 'the counter under the can'",
            "    doc 1 (right→wrong): *",
            "    doc 2 (right→wrong): *",
            "    doc 4 (right→wrong): *",
            "    doc 5 (right→wrong): *",
            "mini_arc:acc,none baseline: warning: 48 samples cannot tell a drop of 0.02 from luck "
            "at 95% confidence with 80% power: that needs 1930 paired at this discordance 0.125, "
            "5945 unpaired (evalchemy plan)",
        ]
    )
    record = _record(pytester, "paired")
    # The baseline was given: this run logged its samples without being asked.
    assert (
        pytester.path / "results/paired/items/mini_arc/mini_arc/samples_mini_arc.jsonl"
    ).is_file()
    check = _baseline_check(record)
    assert check["pairing"] == {
        "n": 48,
        "right_to_wrong": 6,
        "wrong_to_right": 0,
        "p_value": 1 / 64,
        "method": "mcnemar-exact",
    }
    assert (check["passed"], check["mode"], check["p_value"]) == (False, "ci", 1 / 64)
    assert check["unpaired_p_value"] == pytest.approx(unpaired_p, abs=1e-12)
    assert [f["doc_id"] for f in check["flips"]] == [0, 1, 2, 4, 5]
    for flip in check["flips"]:
        assert flip["old_answer"] == flip["target"] != flip["new_answer"]
    markdown = (pytester.path / "paired.md").read_text(encoding="utf-8")
    assert "| 6 / 0 of 48 (mcnemar-exact p=0.0156) |" in markdown
    report = (pytester.path / "results/paired/report.html").read_text(encoding="utf-8")
    flips = re.findall(
        r'<tr class="flip" data-metric="([^"]+)" data-direction="(\w+)" data-doc="(\d+)"', report
    )
    # Every metric both runs report (acc and acc_norm), each with its six flipped documents.
    assert flips == [
        (f"mini_arc/mini_arc {metric}", "right_to_wrong", str(d))
        for metric in ("acc,none", "acc_norm,none")
        for d in (0, 1, 2, 4, 5, 6)
    ]

    # The same run against the baseline without samples: the two-sample test misses the drop.
    unpaired = _run(
        pytester,
        drop_server,
        "unpaired",
        "--evalchemy-gate=ci",
        f"--evalchemy-baseline={pytester.path / 'results' / 'base_plain'}",
    )
    unpaired.assert_outcomes(passed=1)
    check = _baseline_check(_record(pytester, "unpaired"))
    assert check["pairing"] is None
    assert (check["passed"], check["p_value"]) == (True, pytest.approx(unpaired_p, abs=1e-12))
    assert "but not significant at 95% (two-sample z=1.32, p=0.0935" in check["message"]
    unpaired.stdout.fnmatch_lines(
        [
            "note: mini_arc/mini_arc: the baseline logged no samples, so drops are judged by the "
            "two-sample z-test on the stderrs, not paired by document (make the baseline run with "
            "--evalchemy-log-samples)"
        ]
    )

    # evalchemy report RUN_A RUN_B: the flips of the two runs, on stdout and in the page.
    out, err = io.StringIO(), io.StringIO()
    page = pytester.path / "compare.html"
    runs = [str(base_dir), str(pytester.path / "results" / "paired")]
    assert make_report(runs, None, str(page), stdout=out, stderr=err) == 0
    printed = out.getvalue().splitlines()
    # The flipped documents are another model's answers: its canary says so too.
    assert printed[1].startswith(
        "warning: runs base and paired name the same model evalchemy-test-model but their "
        "canaries differ (logprob sum "
    )
    assert printed[2:] == [
        "flips of paired against base:",
        "  mini_arc/mini_arc acc,none: 6 right→wrong, 0 wrong→right of 48 (mcnemar-exact "
        "p=0.01562)",
        "  mini_arc/mini_arc acc_norm,none: 6 right→wrong, 0 wrong→right of 48 (mcnemar-exact "
        "p=0.01562)",
    ]
    html = page.read_text(encoding="utf-8")
    assert "<h2>Flips: paired against base</h2>" in html
    assert html.count('<tr class="flip" ') == 12  # six documents, two metrics


def test_a_small_drop_with_flips_both_ways_is_luck_under_ci(
    pytester: pytest.Pytester, server: EvalchemyTestServer, mixed_server: EvalchemyTestServer
) -> None:
    _run(pytester, server, "base", "--evalchemy-log-samples").assert_outcomes(passed=1)
    baseline = f"--evalchemy-baseline={pytester.path / 'results' / 'base'}"
    # 36 -> 34 right of 48: a drop of 0.0417, more than 0.02.
    _run(pytester, mixed_server, "point", baseline).assert_outcomes(failed=1)
    point = _baseline_check(_record(pytester, "point"))
    ci = _run(pytester, mixed_server, "ci", baseline, "--evalchemy-gate=ci")
    ci.assert_outcomes(passed=1)
    check = _baseline_check(_record(pytester, "ci"))
    # P(X >= 3) for X ~ Binomial(4, 1/2) = 5/16.
    expected = {
        "n": 48,
        "right_to_wrong": 3,
        "wrong_to_right": 1,
        "p_value": 5 / 16,
        "method": "mcnemar-exact",
    }
    assert point["pairing"] == check["pairing"] == expected
    assert (point["passed"], check["passed"]) == (False, True)
    assert check["delta"] == pytest.approx(34 / 48 - 0.75)
    assert [(f["doc_id"], f["direction"]) for f in check["flips"]] == [
        (0, "right_to_wrong"),
        (1, "right_to_wrong"),
        (2, "right_to_wrong"),
        (3, "wrong_to_right"),
    ]
    assert "but not significant at 95% (paired: 3 right→wrong, 1 wrong→right" in check["message"]


def test_pairing_is_refused_when_the_prompts_differ(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    _run(pytester, server, "base", "--evalchemy-log-samples").assert_outcomes(passed=1)
    zero_shot = {"mini_arc": offline_task("mini_arc", limit=None, metrics=["acc"], num_fewshot=0)}
    result = _run(
        pytester,
        server,
        "now",
        "--evalchemy-gate=ci",
        f"--evalchemy-baseline={pytester.path / 'results' / 'base'}",
        tasks=zero_shot,
    )
    result.assert_outcomes(passed=1, warnings=1)
    note = (
        "mini_arc/mini_arc: mini_arc:acc,none not paired with the baseline: the prompts differ "
        "on 48 of 48 documents (first: doc 0): a changed template, description or few-shot set; "
        "judged by the two-sample z-test"
    )
    result.stdout.fnmatch_lines([f"note: {note}"])
    record = _record(pytester, "now")
    assert note in record["gate_notes"]
    check = _baseline_check(record)
    assert check["pairing"] is None
    assert check["flips"] is None
    assert check["p_value"] == check["unpaired_p_value"]


def test_intervals_in_the_summary(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=10, log_samples=True),
        "mini_gsm8k": offline_task("mini_gsm8k", limit=10),
    }
    _run(pytester, server, "r", tasks=tasks).assert_outcomes(passed=2)
    path = pytester.path / "results/r/evalchemy_summary_r.json"
    tasks_out = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    # Logged samples (mini_arc) and the aggregation alone (mini_gsm8k) both give Wilson:
    # 8 of 10 right on each (docs 3 and 7 wrong).
    for key, task, metrics in (
        ("mini_arc/mini_arc", "mini_arc", ("acc,none", "acc_norm,none")),
        ("mini_gsm8k/mini_gsm8k", "mini_gsm8k", ("exact_match,strict-match",)),
    ):
        intervals = tasks_out[key]["intervals"][task]
        for metric in metrics:
            iv = intervals[metric]
            assert set(iv) == {"low", "high", "method", "confidence"}
            assert (iv["method"], iv["confidence"]) == ("wilson", 0.95)
            assert (round(iv["low"], 4), round(iv["high"], 4)) == (0.4902, 0.9433)


def test_report_without_its_baseline_has_no_flips(tmp_path: Path) -> None:
    # The flips view of a run whose baseline folder is gone: no section, no error.
    from pytest_evalchemy.report.run_page import render_report

    summary = {"run_id": "x", "gate": {"baseline": str(tmp_path / "gone.json")}, "tasks": {}}
    assert "Flips" not in render_report(summary, tmp_path)


# What each metric chose on mini_arc's docs 0-3 against mixed_server (docs 0-2 now wrong, doc 3
# now right). The test server gives every token of a choice the same logprob, so where the
# model is wrong acc (the raw sum) picks the shortest wrong choice, and acc_norm (that sum over
# the choice's length) the longest: the two metrics disagree on every wrong answer.
CHOSEN = {
    "acc": {
        0: "the counter under the can",
        1: "a thermometer",
        2: "the sound of traffic",
        3: "baking a cake from batter",
    },
    "acc_norm": {
        0: "juice seeping through the metal",
        1: "a graduated cylinder",
        2: "gravity pulling on its roots",
        3: "an iron nail rusting in the rain",
    },
}
TARGETS = {
    0: "water vapor in the surrounding air",
    1: "a balance",
    2: "light",
    3: "cutting a sheet of paper into strips",
}


def _was_now(doc: int, metric: str) -> tuple[str, str]:
    """The baseline's and this run's answer of ``doc`` under ``metric`` (doc 3 got right)."""
    wrong, right = CHOSEN[metric][doc], TARGETS[doc]
    return (wrong, right) if doc == 3 else (right, wrong)


def _flip_line(doc: int, metric: str) -> str:
    was, now = _was_now(doc, metric)
    arrow = "wrong→right" if doc == 3 else "right→wrong"
    return f"    doc {doc} ({arrow}): target {TARGETS[doc]!r}, was {was!r}, now {now!r}"


def test_each_metric_s_flips_show_the_choice_that_metric_scored(
    pytester: pytest.Pytester, server: EvalchemyTestServer, mixed_server: EvalchemyTestServer
) -> None:
    tasks = {"mini_arc": offline_task("mini_arc", limit=None, metrics=["acc", "acc_norm"])}
    _run(pytester, server, "base", "--evalchemy-log-samples", tasks=tasks).assert_outcomes(passed=1)
    result = _run(
        pytester,
        mixed_server,
        "now",
        f"--evalchemy-baseline={pytester.path / 'results' / 'base'}",
        tasks=tasks,
    )
    result.assert_outcomes(failed=1)
    # lm-eval's own verdicts agree with the choices above: each is wrong where its metric says so.
    rows = [
        json.loads(line)
        for line in (pytester.path / "results/now/items/mini_arc/mini_arc/samples_mini_arc.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    assert [(r["acc"], r["acc_norm"]) for r in rows[:4]] == [(0.0, 0.0)] * 3 + [(1.0, 1.0)]

    # The terminal: each check's flip lines under its own header.
    for metric in ("acc", "acc_norm"):
        result.stdout.fnmatch_lines(
            [f"mini_arc:{metric},none baseline: dropped 0.0417 from 0.7500 to 0.7083*"]
            + ["  paired on 48 documents: 3 right→wrong, 1 wrong→right*"]
            + [_flip_line(doc, metric) for doc in range(4)],
            consecutive=True,
        )
    # The summary's check entries.
    record = _record(pytester, "now")
    for metric in ("acc", "acc_norm"):
        (check,) = [
            c
            for c in record["checks"]
            if c["kind"] == "baseline" and c["metric"] == f"{metric},none"
        ]
        assert [(f["doc_id"], f["old_answer"], f["new_answer"]) for f in check["flips"]] == [
            (doc, *_was_now(doc, metric)) for doc in range(4)
        ]
    # The HTML report's flips view.
    report = (pytester.path / "results/now/report.html").read_text(encoding="utf-8")
    shown = re.findall(
        r'<tr class="flip" data-metric="mini_arc/mini_arc (\w+),none" [^>]*data-doc="(\d+)">'
        r'.*?<code class="old-answer">([^<]*)</code>.*?<code class="new-answer">([^<]*)</code>',
        report,
    )
    assert shown == [
        (metric, str(doc), *_was_now(doc, metric)) for metric in CHOSEN for doc in range(4)
    ]
