"""The HTML reports without a browser: sample parsing, escaping, the comparison's statistics,
history ordering, and the ``evalchemy report`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.cli import main as cli_main
from pytest_evalchemy.core.errors import UsageProblem
from pytest_evalchemy.core.samples import parse_sample
from pytest_evalchemy.judge import comparison, gating
from pytest_evalchemy.judge.comparison import compare, delta_test
from pytest_evalchemy.report.run_page import render_report
from pytest_evalchemy.report.runs import RunInfo, history, load_run
from pytest_evalchemy.report.svg import domain

from .helpers import write_run_summary

MC_ROW = {
    "doc_id": 3,
    "doc": {"question": "Which <b>is</b> a metal?"},
    "target": 1,
    "arguments": [
        ["Q: Which <b>is</b> a metal?\nA:", " wood"],
        ["Q: Which <b>is</b> a metal?\nA:", " iron"],
    ],
    "resps": [[[-3.0, False]], [[-1.0, True]]],
    "filtered_resps": [[-3.0, False], [-1.0, True]],
    "filter": "none",
    "metrics": ["acc", "acc_norm"],
    "acc": 1.0,
    "acc_norm": 1.0,
}
GEN_ROW = {
    "doc_id": 0,
    "target": "3 + 4 = 7\n#### 7",
    "arguments": [["Question: 3 + 4?\nAnswer:", {"until": ["Question:"]}]],
    "resps": [[" 3 + 4 = 8\n#### 8"]],
    "filtered_resps": ["8"],
    "filter": "strict-match",
    "metrics": ["exact_match"],
    "exact_match": 0.0,
}


def _record(task: str, acc: float, stderr: float | None, **extra: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {"acc,none": acc}
    if stderr is not None:
        metrics["acc_stderr,none"] = stderr
    return {
        "benchmark": task,
        "task": task,
        "status": "passed",
        "duration_s": 1.0,
        "metrics": {task: metrics},
        "n_samples": {task: {"original": 48, "effective": 20}},
        "message": "",
        **extra,
    }


def _past_run(root: Path, run_id: str, started: str, tasks: dict[str, Any]) -> Path:
    return write_run_summary(root, run_id, started_at=started, model="m", tasks=tasks, totals={})


def test_multiple_choice_sample() -> None:
    s = parse_sample(MC_ROW, "mini_arc/mini_arc")
    assert s.choices == (" wood", " iron")
    assert (s.chosen, s.target_index) == (1, 1)
    assert (s.answer, s.target, s.correct, s.score) == ("iron", "iron", True, "acc=1")
    assert s.prompt.startswith("Q: Which <b>")


def _choice_row(conts: list[str], lls: list[float], target: int, **scores: float) -> dict[str, Any]:
    ctx = "Q: ?\nA:"
    return {
        "doc_id": 0,
        "target": target,
        "arguments": [
            [ctx if i < len(lls) // 2 or "acc_mutual_info" not in scores else "", c]
            for i, c in enumerate(conts)
        ],
        "filtered_resps": [[ll, False] for ll in lls],
        "filter": "none",
        "metrics": list(scores),
        **scores,
    }


@pytest.mark.parametrize(
    ("conts", "lls", "target", "scores", "picks"),
    [
        # acc_norm divides by the choice's length without lm-eval's delimiter " ": -2.1/2
        # loses to -4.0/4 (with the delimiter counted it would win, -2.1/3 > -4.0/5).
        (
            [" ab", " abcd"],
            [-2.1, -4.0],
            1,
            {"acc": 0.0, "acc_norm": 1.0},
            {"acc": 0, "acc_norm": 1},
        ),
        # The same choices asked without a delimiter (target_delimiter "", or a chat template):
        # lm-eval's verdict tells the lengths were 3 and 5.
        (
            [" ab", " abcd"],
            [-2.1, -4.0],
            0,
            {"acc": 1.0, "acc_norm": 1.0},
            {"acc": 0, "acc_norm": 0},
        ),
        # acc_bytes counts UTF-8 bytes: "é" is one character and two bytes.
        (
            [" é", " ab"],
            [-1.5, -1.8],
            1,
            {"acc_norm": 1.0, "acc_bytes": 0.0},
            {"acc_norm": 1, "acc_bytes": 0},
        ),
        # acc_mutual_info: lm-eval appends each choice without context; the pick subtracts it.
        (
            [" a", " b", " a", " b"],
            [-1.0, -2.0, -0.5, -3.0],
            1,
            {"acc": 0.0, "acc_mutual_info": 1.0},
            {"acc": 0, "acc_mutual_info": 1},
        ),
    ],
)
def test_a_choice_sample_answers_with_the_choice_its_metric_scored(
    conts: list[str], lls: list[float], target: int, scores: dict[str, float], picks: dict[str, int]
) -> None:
    row = _choice_row(conts, lls, target, **scores)
    for metric, pick in picks.items():
        s = parse_sample(row, "t", metric)
        assert len(s.choices) == len(conts) // (2 if "acc_mutual_info" in scores else 1)
        assert (s.chosen, s.answer) == (pick, s.choices[pick].strip())
        assert (s.score, s.correct) == (f"{metric}={scores[metric]:g}", scores[metric] == 1)
    # Without a metric named, the row's first one.
    first = next(iter(scores))
    assert parse_sample(row, "t").chosen == picks[first]


def test_generation_sample() -> None:
    s = parse_sample(GEN_ROW, "mini_gsm8k/mini_gsm8k")
    assert s.choices == ()
    assert s.generation == " 3 + 4 = 8\n#### 8"
    assert (s.answer, s.correct, s.filter) == ("8", False, "strict-match")
    # Newer lm-eval logs the arguments as a dict of dicts: the same sample comes out.
    row = {
        **GEN_ROW,
        "arguments": {"gen_args_0": {"arg_0": "Question: 3 + 4?\nAnswer:", "arg_1": {}}},
    }
    assert parse_sample(row, "x").prompt == "Question: 3 + 4?\nAnswer:"


def test_chat_prompts_are_shown_turn_by_turn() -> None:
    # A chat endpoint's sample logs its messages as JSON (lm-eval's JsonChatStr).
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: 3 + 4?\nAnswer:"},
    ]
    row = {**GEN_ROW, "arguments": [[[json.dumps(messages)], {"until": ["Question:"]}]]}
    prompt = parse_sample(row, "x").prompt
    assert prompt == "[system]\nBe brief.\n\n[user]\nQuestion: 3 + 4?\nAnswer:"
    # A chat template rendered on the completions endpoint is shown as rendered.
    rendered = "<s><|user|>\nQuestion: 3 + 4?\nAnswer:</s>\n<|assistant|>\n"
    row = {**GEN_ROW, "arguments": [[rendered, {}]]}
    assert parse_sample(row, "x").prompt == rendered


def test_report_escapes_text_and_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    item = tmp_path / "items" / "mini_arc" / "mini_arc"
    item.mkdir(parents=True)
    rows = [MC_ROW, {**MC_ROW, "doc_id": 4, "acc": 0.0}, {**MC_ROW, "doc_id": 5}]
    (item / "samples_mini_arc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (item / "results.json").write_text("{}")
    record = _record("mini_arc", 0.5, 0.1, item_dir="items/mini_arc/mini_arc")
    record["status"], record["message"] = "failed", "<script>alert(1)</script>"
    summary = {
        "run_id": "r<1>",
        "endpoint": "http://user:secret@host:8000/v1/completions?key=k",
        "tasks": {"mini_arc/mini_arc": record},
    }
    page = render_report(summary, tmp_path, max_samples=2)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Which &lt;b&gt;is&lt;/b&gt;" in page
    assert "<b>is</b>" not in page
    assert "secret" not in page
    assert "key=k" not in page
    assert "the first 2 of 3 samples" in page
    assert page.count('class="sample"') == 2
    assert 'href="items/mini_arc/mini_arc/samples_mini_arc.jsonl"' in page
    assert "Content-Security-Policy" in page
    # Nothing the browser would fetch: only relative links and data: URLs.
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs
    assert all(not re.match(r"[a-z]+://", r) or r.startswith("data:") for r in refs)


def test_delta_test_is_the_gates_z_test_two_sided() -> None:
    assert comparison.drop_p_value is gating.drop_p_value  # reused, not copied
    delta, p, significant = delta_test(0.80, 0.02, 0.70, 0.03)
    assert delta == pytest.approx(0.10)
    assert p == pytest.approx(2 * gating.drop_p_value(0.10, 0.02, 0.03))
    assert significant
    assert p < 0.01
    assert delta_test(0.70, 0.02, 0.80, 0.03)[1] == pytest.approx(p)  # either direction
    assert delta_test(0.72, 0.1, 0.70, 0.1)[2] is False
    assert delta_test(0.9, None, 0.7, 0.1) == (pytest.approx(0.2), None, False)


def test_compare_against_previous_or_first(tmp_path: Path) -> None:
    def run(i: int, acc: float | None, ppl: float) -> RunInfo:
        tasks = {"t/t": _record("t", acc, 0.01)} if acc is not None else {}
        tasks["p/p"] = {
            "task": "p",
            "metrics": {"p": {"perplexity,none": ppl, "perplexity_stderr,none": 0.1}},
            "higher_is_better": {"p": {"perplexity": False}},
        }
        return RunInfo({"run_id": f"r{i}", "tasks": tasks}, tmp_path / f"r{i}" / "s.json")

    runs = [run(1, 0.50, 10.0), run(2, None, 9.0), run(3, 0.60, 12.0)]
    rows = {(r.key, r.metric): r for r in compare(runs)}
    acc = rows[("t/t", "acc,none")].cells
    assert acc[1].value is None
    # Against the previous run that has the metric: run 3 against run 1.
    assert acc[2].delta == pytest.approx(0.10)
    assert acc[2].significant
    assert acc[2].better
    ppl = rows[("p/p", "perplexity,none")].cells
    assert ppl[1].better is True  # lower perplexity is better
    assert ppl[2].better is False
    assert ppl[2].delta == pytest.approx(3.0)
    first = {(r.key, r.metric): r for r in compare(runs, reference="first")}
    assert first[("p/p", "perplexity,none")].cells[2].delta == pytest.approx(2.0)


def test_history_orders_by_started_at(tmp_path: Path) -> None:
    # Folder names sort the other way round: the order must come from the summaries.
    _past_run(tmp_path, "a_late", "2026-01-02T10:00:00+00:00", {})
    _past_run(tmp_path, "b_early", "2026-01-02T09:00:00+01:00", {})
    _past_run(tmp_path, "c_middle", "2026-01-02T09:30:00+00:00", {})
    (tmp_path / "not_a_run").mkdir()
    assert [r.run_id for r in history(tmp_path)] == ["b_early", "c_middle", "a_late"]


def test_load_run_errors_say_what_to_do(tmp_path: Path) -> None:
    _past_run(tmp_path, "r1", "2026-01-02T10:00:00+00:00", {})
    with pytest.raises(UsageProblem, match="try --history"):
        load_run(tmp_path)
    with pytest.raises(UsageProblem, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(UsageProblem, match="not an evalchemy summary"):
        load_run(tmp_path / "bad.json")


def test_axis_domain() -> None:
    assert domain([0.2, 0.9], [-0.1, 1.2]) == (0.0, 1.0)  # intervals past 0 or 1 are clipped
    lo, hi = domain([5.0, 15.0], [4.0, 16.0])
    assert lo < 4.0
    assert hi > 16.0


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    runs = [
        _past_run(root, f"r{i}", f"2026-01-0{i}T10:00:00+00:00", {"t/t": _record("t", acc, 0.02)})
        for i, acc in ((1, 0.5), (2, 0.6), (3, 0.61))
    ]
    assert cli_main(["report", str(runs[0])]) == 0
    assert (runs[0] / "report.html").is_file()
    out = tmp_path / "cmp.html"
    assert cli_main(["report", *map(str, runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count('data-significant="true"') == 1  # 0.5 -> 0.6 is, 0.6 -> 0.61 is not
    assert page.count('data-significant="false"') == 1
    assert page.count("<svg") == 1
    assert 'href="results/r1/report.html"' in page  # relative to the page
    # The shell front end's spelling, and --history.
    assert cli_main(["--report", "--history", str(root)]) == 0
    assert "comparison of 3 runs" in capsys.readouterr().out
    assert (root / "compare.html").is_file()
    assert cli_main(["report", str(tmp_path / "missing")]) == 4
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["report"]) == 4


def test_report_shows_checks_and_baseline_deltas(tmp_path: Path) -> None:
    record = _record("mini_arc", 0.70, 0.02)
    record["checks"] = [
        {
            "task": "mini_arc",
            "metric": "acc,none",
            "kind": "threshold",
            "bound": ">= 0.6",
            "passed": True,
        },
        {
            "task": "mini_arc",
            "metric": "acc,none",
            "kind": "baseline",
            "bound": "0.7500 - 0.02",
            "passed": False,
            "delta": -0.05,
            "p_value": 0.0384,
            "message": "dropped 0.0500 from 0.7500 to 0.7000, more than 0.02",
        },
    ]
    page = render_report({"run_id": "r", "tasks": {"mini_arc/mini_arc": record}}, tmp_path)
    row = re.search(r'<tr data-key="mini_arc/mini_arc".*?</tr>', page, re.S)
    assert row is not None
    assert "threshold &gt;= 0.6: pass" in row.group(0)
    assert "baseline 0.7500 - 0.02: FAIL" in row.group(0)
    assert "-0.0500 (p=0.0384)" in row.group(0)
    assert 'title="dropped 0.0500 from 0.7500 to 0.7000, more than 0.02"' in row.group(0)
