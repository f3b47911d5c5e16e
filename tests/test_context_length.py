"""Prompts longer than the context: counted by the completions model from the token ids it
sees, reported per item in the terminal, the summary and the HTML report, and a failure with
``--evalchemy-strict-context``. The test server advertises ``max_model_len`` 64 (and rejects
what does not fit, as vLLM does). Backs rows of docs/reliability.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    CHECK_COMPLETIONS,
    assert_no_traceback,
    config_option,
    offline_task,
    read_summary,
    run_evalchemy,
)

# mini_arc with three shots: every prompt is longer than 64 tokens (bytes).
ARC = {"mini_arc": offline_task("mini_arc", limit=4, num_fewshot=3, batch_size=1)}
GSM = {"mini_gsm8k": offline_task("mini_gsm8k", limit=2, num_fewshot=0)}
CUT = re.compile(
    r"Context length \((\d+)\) \+ continuation length \((\d+)\) > max_length \((\d+)\)"
)


def _lm_eval_cuts(item_dir: Path) -> list[int]:
    """Tokens lm-eval cut from each request, from its own log lines (the independent count)."""
    text = (item_dir / "lm_eval.log").read_text()
    return [int(a) + int(b) - int(m) for a, b, m in CUT.findall(text)]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_cut_prompts_are_counted_and_reported_everywhere(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    concurrency: int,
) -> None:
    srv = make_server(max_model_len=64)
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, ARC),
        f"--evalchemy-concurrency={concurrency}",
        "--evalchemy-run-id=ctx",
        # Every prompt is cut: the item would fail on it (test_validity.py); here it reports.
        "--evalchemy-max-invalid-share=1",
    )
    result.assert_outcomes(passed=1)
    run = pytester.path / "results" / "ctx"
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    cuts = _lm_eval_cuts(run / record["item_dir"])
    assert len(cuts) == 16  # lm-eval cut every one of the 16 requests
    context = record["context"]
    assert context["truncated_requests"] == len(cuts)
    assert context["truncated_tokens_max"] == max(cuts)
    assert context["truncated_tokens_total"] == sum(cuts)
    message = (
        f"16 loglikelihood request(s) longer than max_length 64 are cut from the left (by up "
        f"to {max(cuts)} tokens, {sum(cuts)} in all), so they are scored on cut prompts. Serve "
        "a longer context (vLLM --max-model-len) or lower num_fewshot or max_gen_toks"
    )
    assert context["message"] == message
    result.stdout.fnmatch_lines([f"context: mini_arc/mini_arc: {message}"])
    assert f"context: {message}" in (run / "report.html").read_text()
    assert_no_traceback(result)


def test_a_run_that_fits_reports_nothing(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    run_evalchemy(pytester, server.url, config_option(pytester.path, ARC)).assert_outcomes(passed=1)
    assert "context" not in read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_strict_context_fails_the_items_before_their_requests(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    how: str,
) -> None:
    srv = make_server(max_model_len=64)
    args = ["--evalchemy-strict-context"] if how == "flag" else []
    if how == "ini":
        pytester.makeini("[pytest]\nevalchemy_strict_context = true\n")
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, {**ARC, **GSM}), *args)
    result.assert_outcomes(failed=2)
    tasks = read_summary(pytester.path / "results")["tasks"]
    arc, gsm = tasks["mini_arc/mini_arc"], tasks["mini_gsm8k/mini_gsm8k"]
    assert arc["status"] == gsm["status"] == "failed"
    assert arc["message"].startswith(
        "16 loglikelihood request(s) longer than max_length 64 are cut from the left"
    )
    assert arc["message"].endswith("(--evalchemy-strict-context)")
    # A generation prompt plus max_gen_toks (256) cannot fit 64 tokens at all.
    assert gsm["message"].startswith(
        "2 generation request(s) do not fit max_length 64 with max_gen_toks 256 (by up to "
    )
    assert "): vLLM rejects them (HTTP 400). Serve a longer context" in gsm["message"]
    assert gsm["context"]["generation_over"] == 2
    result.stdout.fnmatch_lines(["*mini_arc/mini_arc: 16 loglikelihood request(s)*"])
    # Only the endpoint check's requests: its logprobs probe, its canary and, with a generation
    # item and reasoning "auto", one short chat request looking for thinking. No item request
    # was sent.
    stats = srv.stats()
    assert stats["completions"] == CHECK_COMPLETIONS + 1
    assert stats["requests"].get("/v1/chat/completions") == 1
    assert_no_traceback(result)
