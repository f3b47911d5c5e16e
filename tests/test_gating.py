"""The gate's statistics, baseline matching and reports, as pure functions with known numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.core.config import PlannedItem, TaskConfig, Threshold, parse_config
from pytest_evalchemy.core.errors import ConfigError, UsageProblem
from pytest_evalchemy.judge.baseline import (
    comparability_problems,
    higher_is_better,
    load_baseline,
    presence_notes,
)
from pytest_evalchemy.judge.gating import (
    Check,
    GateSettings,
    check_baseline,
    check_properties,
    check_thresholds,
    confidence_interval,
    drop_p_value,
    format_checks,
    gate_item,
    judge_drop,
    judge_threshold,
    unmatched_overrides,
    z_for,
)
from pytest_evalchemy.report.markdown import render_markdown

from .helpers import sem, write_run_summary

POINT = GateSettings()
CI = GateSettings(mode="ci")


def _item(key: str = "mini_arc", **task: Any) -> PlannedItem:
    return PlannedItem("bench", TaskConfig(key=key, tasks=(key,), **task), True)


def _record(acc: float, n: int, task: str = "mini_arc", **extra: Any) -> dict[str, Any]:
    se = sem(acc, n)
    return {
        "metrics": {
            task: {
                "acc,none": acc,
                "acc_stderr,none": se,
                "acc_norm,none": acc,
                "acc_norm_stderr,none": se,
            }
        },
        "n_samples": {task: {"original": 48, "effective": n}},
        "settings": {"num_fewshot": 1, "limit": n},
        "versions": {task: 1.0},
        "higher_is_better": {task: {"acc": True, "acc_norm": True}},
        **extra,
    }


# ---------------------------------------------------------------- thresholds


def test_normal_quantiles() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for(0.90) == pytest.approx(1.644854, abs=1e-6)
    assert confidence_interval(0.75, 0.0993, 0.95) == pytest.approx((0.55538, 0.94462), abs=1e-5)


def test_point_fails_where_the_interval_reaches_the_threshold() -> None:
    th = Threshold("acc,none", min=0.9)
    point = judge_threshold("mini_arc", "acc,none", 0.75, 0.0993, th, POINT, n=20)
    assert not point.passed
    assert point.message == (
        "0.7500 misses >= 0.9 (stderr 0.0993, 95% normal CI [0.5554, 0.9446], n=20)"
    )
    ci = judge_threshold("mini_arc", "acc,none", 0.75, 0.0993, th, CI, n=20)
    assert ci.passed
    assert ci.mode == "ci"
    assert ci.interval == pytest.approx((0.5554, 0.9446), abs=1e-4)
    assert "but the interval reaches it" in ci.message


def test_ci_fails_when_the_whole_interval_misses() -> None:
    check = judge_threshold(
        "mini_arc", "acc,none", 0.75, 0.0993, Threshold("acc,none", min=0.96), CI, n=20
    )
    assert not check.passed
    # value, stderr, interval, threshold and sample count, all in one message
    assert check.message == (
        "0.7500 misses >= 0.96, and so does the whole interval "
        "(stderr 0.0993, 95% normal CI [0.5554, 0.9446], n=20)"
    )
    assert check.verdict == "FAIL " + check.message


def test_ci_on_an_upper_bound() -> None:
    th = Threshold("perplexity,none", max=2.2)
    assert not judge_threshold("t", "perplexity,none", 2.5, 0.1, th, CI).passed  # [2.30, 2.70]
    th = Threshold("perplexity,none", max=2.35)
    assert judge_threshold("t", "perplexity,none", 2.5, 0.1, th, CI).passed
    assert not judge_threshold("t", "perplexity,none", 2.5, 0.1, th, POINT).passed


@pytest.mark.parametrize("stderr", ["N/A", None])
def test_ci_without_stderr_falls_back_to_the_point_value(stderr: Any) -> None:
    metrics = {"mini_arc": {"acc,none": 0.75, "acc_stderr,none": stderr}}
    (fail,) = check_thresholds(metrics, (Threshold("acc,none", min=0.9),), gate=CI)
    assert (fail.passed, fail.mode, fail.stderr) == (False, "point", None)
    assert "no stderr, point comparison" in fail.message
    (ok,) = check_thresholds(metrics, (Threshold("acc,none", min=0.5),), gate=CI)
    assert ok.passed
    assert ok.message == "no stderr, point comparison"


def test_command_line_replaces_the_config_bound_of_the_same_metric() -> None:
    metrics = _record(0.75, 20)["metrics"]
    config = (Threshold("acc,none", min=0.9), Threshold("acc_norm,none", min=0.5))
    checks = check_thresholds(metrics, config, (Threshold("mini_arc:acc,none", min=0.7),))
    assert [(c.metric, c.bound, c.source, c.passed) for c in checks] == [
        ("acc,none", ">= 0.7", "command line", True),
        ("acc_norm,none", ">= 0.5", "config", True),
    ]


def test_command_line_thresholds_are_scoped_to_their_item() -> None:
    record = _record(0.75, 20)
    overrides = (
        Threshold("mini_mmlu:acc,none", min=0.99),  # another item's lm-eval task
        Threshold("other_bench:acc,none", min=0.99),  # another benchmark
        Threshold("bench:acc_norm,none", min=0.8),  # this item's benchmark: all its tasks
    )
    checks = gate_item(_item(), record, overrides, POINT).checks
    assert [(c.task, c.metric, c.bound, c.passed) for c in checks] == [
        ("mini_arc", "acc_norm,none", ">= 0.8", False)
    ]
    assert unmatched_overrides(overrides, {"bench", "mini_arc", "mini_mmlu"}) == [
        "--evalchemy-threshold other_bench:acc,none >= 0.99: no item, benchmark or lm-eval "
        "task of the config is called 'other_bench' (fine if it is a subtask of a group)"
    ]


def test_a_metric_the_task_does_not_produce_names_the_produced_ones() -> None:
    metrics = _record(0.75, 20)["metrics"]
    (bare,) = check_thresholds(metrics, (Threshold("f1,none", min=0.1),))
    assert bare.message == "no lm-eval task reported f1,none; reported: acc,none, acc_norm,none"
    (sub,) = check_thresholds(metrics, (Threshold("mini_arc:f1,none", min=0.1),))
    assert sub.message == "mini_arc did not report f1,none; it reported: acc,none, acc_norm,none"
    (other,) = check_thresholds(metrics, (Threshold("arc_easy:acc,none", min=0.1),))
    assert other.message == "this item ran no lm-eval task arc_easy; it ran: mini_arc"
    assert [bare.passed, sub.passed, other.passed] == [False, False, False]


# ---------------------------------------------------------------- baseline


def test_drop_point_and_z_test() -> None:
    # 0.75 -> 0.50 on 8 documents each: a big drop, but well within luck.
    small = judge_drop(
        "t", "acc,none", 0.5, sem(0.5, 8), 0.75, sem(0.75, 8), 0.02, CI, n=8, base_n=8
    )
    assert small.passed
    assert small.p_value == pytest.approx(0.158655, abs=1e-6)  # z = 0.25 / 0.25 = 1.0
    assert "not significant at 95%" in small.message
    assert not judge_drop("t", "acc,none", 0.5, sem(0.5, 8), 0.75, sem(0.75, 8), 0.02, POINT).passed
    # The same drop on 48 documents each is significant: z = 0.25 / 0.0965 = 2.59.
    big = judge_drop(
        "t", "acc,none", 0.5, sem(0.5, 48), 0.75, sem(0.75, 48), 0.02, CI, n=48, base_n=48
    )
    assert not big.passed
    assert big.p_value == pytest.approx(0.004782, abs=1e-6)
    assert big.message == (
        "dropped 0.2500 from 0.7500 to 0.5000, more than 0.02 (two-sample z=2.59, p=0.00478, n=48 vs 48)"
    )
    assert big.delta == pytest.approx(-0.25)
    assert big.bound == "0.7500 - 0.02"


def test_drop_edges() -> None:
    # Exactly the allowed drop passes despite float noise; a rise never fails.
    assert judge_drop("t", "acc,none", 0.75, None, 0.77, None, 0.02, POINT).passed
    assert judge_drop("t", "acc,none", 0.9, 0.01, 0.75, 0.01, 0.0, CI).passed
    assert drop_p_value(0.1, 0.0, 0.0) == 0.0  # no spread at all: any drop is real
    no_se = judge_drop("t", "acc,none", 0.5, None, 0.75, 0.06, 0.02, CI)
    assert (no_se.passed, no_se.mode) == (False, "point")
    assert no_se.message.endswith("(no stderr, point comparison, n=? vs ?)")


def test_lower_is_better_drops_when_it_rises() -> None:
    worse = judge_drop(
        "wiki", "word_perplexity,none", 10.5, None, 10.0, None, 0.02, POINT, higher_better=False
    )
    assert not worse.passed
    assert worse.message.startswith("rose (lower is better) 0.5000 from 10.0000 to 10.5000")
    assert worse.bound == "10.0000 + 0.02"
    better = judge_drop(
        "wiki", "word_perplexity,none", 9.0, None, 10.0, None, 0.02, POINT, higher_better=False
    )
    assert better.passed
    record = {"higher_is_better": {"wiki": {"word_perplexity": False}}}
    assert higher_is_better([{}, record], "wiki", "word_perplexity,none") is False
    assert higher_is_better([{}], "wiki", "acc,none") is True  # lm-eval's default


def test_baseline_compares_listed_metrics_with_per_metric_max_drop() -> None:
    base, new = _record(0.75, 8), _record(0.70, 8)
    # Listed metrics: only acc; the config allows acc to drop 0.1.
    item = _item(metrics=("acc",), max_drop=(("acc,none", 0.1),))
    checks, notes = check_baseline(item, new, base, POINT)
    assert [(c.metric, c.passed, c.bound) for c in checks] == [("acc,none", True, "0.7500 - 0.1")]
    # Without samples the drop is judged unpaired, and the note says so.
    assert notes == [
        "bench/mini_arc: this run and the baseline logged no samples, so drops are judged by "
        "the two-sample z-test on the stderrs, not paired by document (make the baseline run "
        "with --evalchemy-log-samples)"
    ]
    assert checks[0].pairing is None
    # Nothing listed: every metric both runs report, with the run's max drop.
    checks, _ = check_baseline(_item(), new, base, POINT)
    assert [(c.metric, c.passed) for c in checks] == [("acc,none", False), ("acc_norm,none", False)]
    # A thresholded metric is compared even when not listed.
    checks, _ = check_baseline(item, new, base, POINT, {("mini_arc", "acc_norm,none")})
    assert [c.metric for c in checks] == ["acc,none", "acc_norm,none"]


def test_gate_item_notes_what_is_not_like_for_like(tmp_path: Path) -> None:
    base = _record(0.75, 8)
    base["metrics"]["mini_arc"].pop("acc_norm,none")
    baseline = load_baseline(write_run_summary(tmp_path, "r1", tasks={"bench/mini_arc": base}))
    new = _record(0.75, 20, versions={"mini_arc": 2.0})
    result = gate_item(_item(), new, (), GateSettings(baseline=baseline))
    assert result.warnings == [
        "bench/mini_arc: not like for like with the baseline (r1): limit 8 -> 20; "
        "mini_arc version 1.0 -> 2.0"
    ]
    assert result.notes[2] == "bench/mini_arc: mini_arc:acc_norm,none is not in the baseline"
    assert result.notes[1].startswith("bench/mini_arc: this run and the baseline logged no samples")
    assert [(c.kind, c.metric, c.passed) for c in result.checks] == [("baseline", "acc,none", True)]
    assert comparability_problems(new, new) == []


def test_load_baseline_from_a_file_or_a_run_folder(tmp_path: Path) -> None:
    run = write_run_summary(
        tmp_path, "r1", tasks={"b/a": _record(0.75, 8), "b/x": {"status": "error"}}
    )
    by_folder, by_file = load_baseline(run), load_baseline(run / "evalchemy_summary_r1.json")
    assert by_folder.path == by_file.path
    assert by_folder.run_id == "r1"
    assert by_folder.record("b/x") is None  # no metrics: nothing to compare with
    assert by_folder.record("b/a") is not None
    with pytest.raises(UsageProblem, match="looks like a results root, pass one run folder: r1"):
        load_baseline(tmp_path)
    with pytest.raises(UsageProblem, match="does not exist"):
        load_baseline(tmp_path / "nope")
    (tmp_path / "bad.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(UsageProblem, match="is not an evalchemy summary"):
        load_baseline(tmp_path / "bad.json")


def test_presence_notes(tmp_path: Path) -> None:
    baseline = load_baseline(
        write_run_summary(
            tmp_path, "r1", tasks={"b/a": _record(0.75, 8), "b/gone": _record(0.75, 8)}
        )
    )
    now = {"b/a": _record(0.75, 8), "b/new": _record(0.5, 8), "b/broke": {"status": "error"}}
    now["b/gone"] = {"status": "skipped", "metrics": {}}
    assert presence_notes(baseline, now) == [
        "b/gone: in the baseline only (this run: skipped)",
        "b/new: not in the baseline; nothing to compare",
    ]


def test_max_drop_in_the_config(tmp_path: Path) -> None:
    data = {"tasks": {"mini_arc": {"max_drop": {"acc": 0.05, "arc_easy:acc_norm": 0.1}}}}
    (task,) = parse_config(tmp_path / "c.json", data).tasks
    assert task.max_drop == (("acc,none", 0.05), ("arc_easy:acc_norm,none", 0.1))
    with pytest.raises(ConfigError, match=r"tasks.mini_arc.max_drop.acc: -1 is out of range"):
        parse_config(tmp_path / "c.json", {"tasks": {"mini_arc": {"max_drop": {"acc": -1}}}})


# ---------------------------------------------------------------- reports


def test_format_checks_and_properties() -> None:
    checks = [
        judge_threshold(
            "mini_arc", "acc,none", 0.75, 0.0993, Threshold("acc,none", 0.9), POINT, n=20
        ),
        judge_drop("mini_arc", "acc,none", 0.75, 0.0993, 0.76, 0.0993, 0.02, POINT),
    ]
    assert format_checks(checks).splitlines() == [
        "task      metric    value   stderr  threshold / baseline  verdict",
        "mini_arc  acc,none  0.7500  0.0993  >= 0.9                FAIL",
        "mini_arc  acc,none  0.7500  0.0993  0.7600 - 0.02         pass",
        "mini_arc:acc,none threshold: 0.7500 misses >= 0.9 (stderr 0.0993, 95% normal CI [0.5554, 0.9446], n=20)",
    ]
    stored = json.loads(json.dumps([c.to_dict() for c in checks]))
    assert Check.from_dict(stored[0]) == checks[0]
    assert check_properties(stored) == [
        ("check:mini_arc:acc,none", "FAIL " + checks[0].message),
        ("check:mini_arc:acc,none:baseline", "pass"),
    ]


def test_markdown_report() -> None:
    fail = judge_drop("mini_arc", "acc,none", 0.5, 0.0729, 0.75, 0.0632, 0.02, CI, n=48, base_n=48)
    ok = judge_threshold("mini_arc", "acc,none", 0.5, 0.0729, Threshold("acc,none", 0.4), CI)
    summary = {
        "run_id": "r2",
        "model": "m",
        "totals": {"passed": 0, "failed": 1, "skipped": 1},
        "gate": {
            "mode": "ci",
            "confidence": 0.95,
            "max_drop": 0.02,
            "baseline": "/x/r1/evalchemy_summary_r1.json",
            "baseline_run_id": "r1",
            "notes": ["b/mmlu: in the baseline only (not in this run)"],
        },
        "tasks": {
            "mini_arc/mini_arc": {
                "task": "mini_arc",
                "status": "failed",
                "metrics": {"mini_arc": {"acc,none": 0.5, "acc_stderr,none": 0.0729}},
                "checks": [ok.to_dict(), fail.to_dict()],
            },
            "b/off": {
                "task": "off",
                "status": "skipped",
                "metrics": {},
                "message": "disabled in config",
            },
        },
    }
    assert render_markdown(summary).splitlines() == [
        "## Evalchemy run `r2`: ❌ 1 of 2 item(s) not passed",
        "",
        "model `m` · 1 failed, 1 skipped · gate `ci` at 95% confidence · baseline `r1` (max drop 0.02)",
        "",
        "| Item | Status | Metric | Value | Interval | Threshold | Baseline | Δ "
        "| Flips (right→wrong / wrong→right) | Verdict |",
        "|---|---|---|---:|---|---|---:|---:|---|---|",
        "| mini_arc/mini_arc | failed | acc,none | 0.5000 | ± 0.0729 | >= 0.4 | 0.7500 | -0.2500 "
        "| - | ❌ FAIL: dropped 0.2500 from 0.7500 to 0.5000, more than 0.02 (two-sample z=2.59, "
        "p=0.00478, n=48 vs 48) |",
        "| b/off | skipped | - | - | - | - | - | - | - | disabled in config |",
        "",
        "### Notes",
        "",
        "- b/mmlu: in the baseline only (not in this run)",
    ]
