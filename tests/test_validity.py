"""Validity, not just a score: an item records the shares of its generation answers that ended
at max_tokens, of its reasoning answers whose thinking never closed and of its prompts cut to
fit the context, and fails (a failed item, not an error) when a share is above its
``max_invalid_share``. Real runs through pytester against the test server, whose answers end
at ``max_tokens`` with ``finish_reason: "length"`` as vLLM's do.

The offline gsm8k's first 8 answers are 94, 86, 73, 38, 117, 127, 49 and 70 tokens (bytes)
long; the server ends an answer at ``max_tokens`` when it has no room left for its end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    CHECK_COMPLETIONS,
    assert_no_traceback,
    check_summary,
    config_option,
    offline_task,
    read_summary,
    run_evalchemy,
)

GSM = "mini_gsm8k"
ITEM = f"{GSM}/{GSM}"
# Of the 8 answers, 6 are at least 60 tokens long, 3 at least 90 and 4 at least 80.
LENGTH_60 = (
    "6 of 8 generation answers (75%) ended at max_tokens (60); raise max_gen_toks in "
    "gen_kwargs or max_invalid_share"
)


def _gsm(max_gen_toks: int, **settings: Any) -> dict[str, Any]:
    return {GSM: offline_task(GSM, gen_kwargs={"max_gen_toks": max_gen_toks}, **settings)}


def _record(pytester: pytest.Pytester, key: str = ITEM) -> dict[str, Any]:
    return check_summary(read_summary(pytester.path / "results"))["tasks"][key]


def test_answers_cut_at_max_tokens_fail_the_item_with_the_reason(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, _gsm(60)))
    result.assert_outcomes(failed=1)
    summary = read_summary(pytester.path / "results")
    assert summary["totals"]["failed"] == 1
    assert summary["totals"]["error"] == 0
    record = _record(pytester)
    assert record["status"] == "failed"
    assert record["message"] == LENGTH_60
    assert record["validity"] == {
        "length": {"count": 6, "of": 8, "share": 0.75, "max_tokens": 60},
        "cut_prompts": {"count": 0, "of": 8, "share": 0.0},
    }
    # The metrics of the broken answers are still recorded, for whoever looks.
    assert "exact_match,strict-match" in record["metrics"][GSM]
    result.stdout.fnmatch_lines([f"*{ITEM}: {LENGTH_60}*"])
    assert_no_traceback(result)


def test_an_item_below_the_share_passes_and_the_table_shows_its_shares(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    tasks = {**_gsm(90), "mini_arc": offline_task("mini_arc", limit=4)}
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, tasks))
    result.assert_outcomes(passed=2)
    record = _record(pytester)
    assert record["status"] == "passed"
    assert record["message"] == ""
    assert record["validity"]["length"] == {"count": 3, "of": 8, "share": 0.375, "max_tokens": 90}
    # A loglikelihood item: its prompts are measured, it has no generation answers.
    arc = _record(pytester, "mini_arc/mini_arc")
    assert arc["validity"] == {"cut_prompts": {"count": 0, "of": 16, "share": 0.0}}
    result.stdout.fnmatch_lines(
        [
            "*evalchemy scores*",
            "benchmark*task*metric*value*status*time*invalid",
            "mini_gsm8k*mini_gsm8k*exact_match,*passed*max_tokens 38% (3/8)",
        ]
    )
    # Only the item with broken answers has a cell; its other rows stay empty.
    table = result.stdout.str().split("evalchemy scores")[1]
    assert table.count("max_tokens 38% (3/8)") == 1
    assert "cut prompts" not in table
    # The HTML report shows them beside the item.
    (page,) = (pytester.path / "results").glob("*/report.html")
    assert "invalid: max_tokens 38% (3/8)" in page.read_text(encoding="utf-8")


def test_a_share_at_the_limit_passes(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    run_evalchemy(pytester, server.url, config_option(pytester.path, _gsm(80))).assert_outcomes(
        passed=1
    )
    assert _record(pytester)["validity"]["length"]["share"] == 0.5


def test_a_table_without_broken_answers_has_no_invalid_column(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, _gsm(256)))
    result.assert_outcomes(passed=1)
    assert _record(pytester)["validity"]["length"] == {
        "count": 0,
        "of": 8,
        "share": 0.0,
        "max_tokens": 256,
    }
    header = next(line for line in result.stdout.lines if line.startswith("benchmark"))
    assert header.split() == ["benchmark", "task", "metric", "value", "status", "time"]


def test_the_task_key_sets_the_items_share(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    tasks = {
        "lenient": _gsm(60, max_invalid_share=0.8)[GSM],
        "strict": _gsm(90, max_invalid_share=0.25)[GSM],
    }
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, tasks))
    result.assert_outcomes(passed=1, failed=1)
    assert _record(pytester, "lenient/lenient")["status"] == "passed"
    strict = _record(pytester, "strict/strict")
    assert strict["status"] == "failed"
    assert strict["message"].startswith("3 of 8 generation answers (38%) ended at max_tokens (90)")


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_the_run_wide_share_overrides_the_task_key(
    pytester: pytest.Pytester,
    server: EvalchemyTestServer,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    # The task key would pass 6 of 8 (0.8) and fail 3 of 8 (0.25); the run's 0.5 decides.
    tasks = {
        "lenient": _gsm(60, max_invalid_share=0.8)[GSM],
        "strict": _gsm(90, max_invalid_share=0.25)[GSM],
    }
    args = [config_option(pytester.path, tasks)]
    if how == "flag":
        args.append("--evalchemy-max-invalid-share=0.5")
    elif how == "env":
        monkeypatch.setenv("EVALCHEMY_MAX_INVALID_SHARE", "0.5")
    else:
        pytester.makeini("[pytest]\nevalchemy_max_invalid_share = 0.5\n")
    result = run_evalchemy(pytester, server.url, *args)
    result.assert_outcomes(passed=1, failed=1)
    assert _record(pytester, "lenient/lenient")["message"] == LENGTH_60
    assert _record(pytester, "strict/strict")["status"] == "passed"
    gate = read_summary(pytester.path / "results")["gate"]
    assert gate["max_invalid_share"] == 0.5


@pytest.mark.parametrize(
    ("how", "value", "where"),
    [
        ("flag", "1.5", "--evalchemy-max-invalid-share"),
        ("flag", "half", "--evalchemy-max-invalid-share"),
        (
            "env",
            "nan",
            "--evalchemy-max-invalid-share (from the environment variable "
            "EVALCHEMY_MAX_INVALID_SHARE)",
        ),
        ("ini", "-0.1", "--evalchemy-max-invalid-share (from evalchemy_max_invalid_share in *"),
    ],
)
def test_a_bad_share_is_one_line_before_any_request(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    value: str,
    where: str,
) -> None:
    srv = make_server()
    args = [config_option(pytester.path, _gsm(60))]
    if how == "flag":
        args.append(f"--evalchemy-max-invalid-share={value}")
    elif how == "env":
        monkeypatch.setenv("EVALCHEMY_MAX_INVALID_SHARE", value)
    else:
        pytester.makeini(f"[pytest]\nevalchemy_max_invalid_share = {value}\n")
    result = run_evalchemy(pytester, srv.url, *args)
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [f"ERROR: {where}: expected a share between 0 and 1, e.g. 0.5; got '{value}'"]
    )
    assert [line for line in result.stderr.lines if line.strip()] == [result.stderr.lines[0]]
    assert srv.stats()["completions"] == 0
    assert srv.stats()["requests"] == {}


@pytest.mark.parametrize(
    ("value", "problem"), [(2, "out of range (maximum 1)"), ("0.5", "expected number")]
)
def test_a_bad_task_key_is_refused_before_any_request(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    value: Any,
    problem: str,
) -> None:
    srv = make_server()
    tasks = _gsm(60, max_invalid_share=value)
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, tasks))
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"*tasks.{GSM}.max_invalid_share: *{problem}*"])
    assert srv.stats()["requests"] == {}


@pytest.mark.parametrize(
    ("mode", "endpoint"), [("content", "completions"), ("content", "chat"), ("field", "chat")]
)
def test_thinking_that_never_closes_fails_the_item(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    mode: str,
    endpoint: str,
) -> None:
    # 60 tokens for the answer and no thinking budget: the 100-byte thinking never closes.
    srv = make_server(reasoning=mode)
    url = srv.chat_completions_url if endpoint == "chat" else srv.completions_url
    result = run_evalchemy(pytester, url, config_option(pytester.path, _gsm(60, thinking_budget=0)))
    result.assert_outcomes(failed=1)
    record = _record(pytester)
    assert record["status"] == "failed"
    assert record["thinking"]["unfinished"] == 8
    validity = record["validity"]
    assert validity["length"] == {"count": 8, "of": 8, "share": 1.0, "max_tokens": 60}
    assert validity["unclosed_thinking"] == {"count": 8, "of": 8, "share": 1.0}
    # A chat endpoint's prompts are not tokenized by the plugin: nothing to measure.
    assert ("cut_prompts" in validity) == (endpoint == "completions")
    assert record["message"] == (
        "8 of 8 generation answers (100%) ended at max_tokens (60); raise max_gen_toks in "
        "gen_kwargs or thinking_budget or max_invalid_share; 8 of 8 reasoning answers (100%) "
        "never closed their thinking (no </think>); raise thinking_budget or max_invalid_share"
    )
    result.stdout.fnmatch_lines(
        ["*mini_gsm8k*failed*max_tokens 100% (8/8), unclosed thinking 100% (8/8)"]
    )
    assert_no_traceback(result)


def test_thinking_with_room_closes_and_passes(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(reasoning="content")
    tasks = _gsm(256, thinking_budget=300)
    run_evalchemy(pytester, srv.url, config_option(pytester.path, tasks)).assert_outcomes(passed=1)
    validity = _record(pytester)["validity"]
    assert validity["unclosed_thinking"] == {"count": 0, "of": 8, "share": 0.0}
    # The budget is part of what each request was sent with.
    assert validity["length"] == {"count": 0, "of": 8, "share": 0.0, "max_tokens": 556}


def test_prompts_cut_to_fit_the_context_fail_the_item(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # Three shots of mini_arc: each of the 16 prompts is longer than the 64 tokens served.
    srv = make_server(max_model_len=64)
    tasks = {"mini_arc": offline_task("mini_arc", limit=4, num_fewshot=3, batch_size=1)}
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, tasks))
    result.assert_outcomes(failed=1)
    record = _record(pytester, "mini_arc/mini_arc")
    assert record["validity"] == {"cut_prompts": {"count": 16, "of": 16, "share": 1.0}}
    assert record["context"]["truncated_requests"] == 16
    assert record["message"] == (
        "16 of 16 prompts (100%) were cut to fit the context (max_length 64); serve a longer "
        "context (vLLM --max-model-len), lower num_fewshot or max_gen_toks, or raise "
        "max_invalid_share"
    )
    result.stdout.fnmatch_lines(["*mini_arc*failed*cut prompts 100% (16/16)"])


def test_answers_replayed_from_the_request_cache_are_left_out_of_the_length_share(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # The endpoint check's requests (its logprobs probe and canary, and a chat request looking
    # for thinking) and 4 answers, then every completion fails: the item errors with 4 answers
    # in its request cache, which the resume replays.
    check = CHECK_COMPLETIONS + 1
    srv = make_server(fail_after=check + 4, fail_status=500)
    cfg = config_option(pytester.path, _gsm(60, batch_size=1, max_invalid_share=0.25))
    once = ("--evalchemy-concurrency=1", "--evalchemy-outage-timeout=0")
    first = run_evalchemy(
        pytester, srv.url, cfg, "--evalchemy-run-id=r", "--evalchemy-max-retries=1", *once
    )
    first.assert_outcomes(failed=1)
    assert _record(pytester)["status"] == "error"
    srv.fail_after = None
    srv.reset_stats()
    resumed = run_evalchemy(pytester, srv.url, cfg, "--evalchemy-resume=r", *once)
    assert srv.stats()["completions"] == check + 4  # the check and the 4 answers not cached
    record = _record(pytester)
    assert record["n_samples"][GSM]["effective"] == 8
    # The 4 cached answers have no finish reason, and their prompts were not measured again:
    # 2 of the 4 asked in this run ended at 60 (6 of all 8 did).
    assert record["validity"]["length"] == {
        "count": 2,
        "of": 4,
        "share": 0.5,
        "max_tokens": 60,
        "replayed": 4,
    }
    assert record["validity"]["cut_prompts"] == {"count": 0, "of": 4, "share": 0.0}
    resumed.assert_outcomes(failed=1)
    assert record["status"] == "failed"
    assert record["message"] == (
        "2 of 4 generation answers (50%) ended at max_tokens (60) (4 more, replayed from the "
        "request cache, have no finish reason); raise max_gen_toks in gen_kwargs or "
        "max_invalid_share"
    )
    resumed.stdout.fnmatch_lines(["*mini_gsm8k*failed*max_tokens 50% (2/4, 4 replayed)"])


USER_TESTS = """
def test_short_answers(evalchemy):
    evalchemy.run("mini_gsm8k", num_fewshot=1, limit=8, gen_kwargs={"max_gen_toks": 60})

def test_short_answers_taken(evalchemy):
    r = evalchemy.run(
        "mini_gsm8k", num_fewshot=1, limit=8, gen_kwargs={"max_gen_toks": 60},
        max_invalid_share=1,
    )
    assert r.record["validity"]["length"]["count"] == 6
"""


def test_a_run_of_the_fixture_fails_on_broken_answers_too(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = run_evalchemy(
        pytester, server.url, config_option(pytester.path, _gsm(256)), "test_user.py"
    )
    result.assert_outcomes(passed=2, failed=1)  # the config's item, and the two tests
    result.stdout.fnmatch_lines([f"*test_short_answers/mini_gsm8k: {LENGTH_60}*"])
    failed = _record(pytester, "test_short_answers/mini_gsm8k")
    assert failed["status"] == "failed"
    assert failed["message"] == LENGTH_60
    assert _record(pytester, "test_short_answers_taken/mini_gsm8k")["status"] == "passed"
