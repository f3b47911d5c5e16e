"""Chat templates, chat endpoints and reasoning models through the plugin: real pytest runs
(pytester), real lm-eval, the test server. Scores and the very prompts sent are compared
with lm-eval's own models on the same server."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.endpoint import CANARY_TEXT
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.hf_tokenizer import write_hf_tokenizer
from pytest_evalchemy.testing.server import THINKING, EvalchemyTestServer, encode

from .helpers import (
    CHECK_COMPLETIONS,
    REPO,
    config_option,
    expected,
    offline_task,
    read_summary,
    run_evalchemy,
)

GSM = "mini_gsm8k"
GSM_METRICS = ("exact_match,strict-match", "exact_match,flexible-extract")


def _run(pytester: pytest.Pytester, url: str, tasks: dict, *args: str) -> pytest.RunResult:
    return run_evalchemy(
        pytester, url, config_option(pytester.path, tasks), "--evalchemy-no-report", *args
    )


def _records(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    return read_summary(pytester.path / "results")["tasks"]


def _lm_eval(model: str, model_args: dict[str, Any], tasks: list[str], **kwargs: Any) -> Any:
    """lm-eval's own model, in-process, on the offline benchmarks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        num_fewshot=1,
        limit=8,
        task_manager=TaskManager(include_path=str(REPO / "benchmarks"), include_defaults=False),
        **kwargs,
    )


def _same_metrics(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    shared = {k: v for k, v in theirs.items() if k in ours}
    assert shared == ours
    assert len(shared) >= 2


def _is_probe(prompt: tuple[str, Any]) -> bool:
    """The endpoint check's own requests."""
    endpoint, value = prompt
    if endpoint == "chat":
        return "What is 2 + 3?" in value
    checks = ("Hi", CANARY_TEXT)
    probes = tuple(tuple(encode(text, True)) for text in checks)
    return value in (tuple(encode("Hello world")), *probes)


def _same_prompts(ours: list[tuple[str, Any]], theirs: list[tuple[str, Any]]) -> None:
    ours_left = Counter(ours) - Counter(theirs)
    assert Counter(theirs) - Counter(ours) == Counter()
    assert all(_is_probe(p) for p in ours_left), list(ours_left)[:2]
    assert len(theirs) >= 8


# ---------------------------------------------------------------- reasoning


@pytest.mark.parametrize(
    ("mode", "endpoint"),
    [("content", "completions"), ("content", "chat"), ("field", "chat")],
)
def test_reasoning_model_scores_what_the_plain_model_scores(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    answer_key: list[AnswerEntry],
    mode: str,
    endpoint: str,
) -> None:
    srv = make_server(reasoning=mode)
    url = srv.chat_completions_url if endpoint == "chat" else srv.completions_url
    result = _run(pytester, url, {GSM: offline_task(GSM, log_samples=True)})
    result.assert_outcomes(passed=1)
    how = "reasoning field" if mode == "field" else "<think> in the content"
    result.stdout.fnmatch_lines(
        [f"evalchemy: chat template: served; *reasoning: detected ({how})*"]
    )
    record = _records(pytester)[f"{GSM}/{GSM}"]
    plain = expected(answer_key, GSM, 8)
    assert plain == 0.75
    for metric in GSM_METRICS:
        assert record["metrics"][GSM][metric] == plain
    assert record["settings"]["reasoning"] is True
    assert record["thinking"] == {
        "responses": 8,
        "with_thinking": 8,
        "unfinished": 0,
        "thinking_chars": {"total": 8 * len(THINKING), "mean": len(THINKING), "max": len(THINKING)},
    }
    samples = pytester.path.glob(f"results/*/items/{GSM}/{GSM}/samples_{GSM}.jsonl")
    rows = [json.loads(line) for line in next(samples).read_text().splitlines()]
    for row in rows:
        (thinking,) = row["thinking"][0]
        assert thinking == THINKING  # kept for people to read...
        assert "#### -999" in row["resps"][0][0]
        assert "-999" not in row["filtered_resps"][0]  # ...never scored


@pytest.mark.parametrize("mode", ["content", "field"])
@pytest.mark.parametrize("think_end_token", [None, "</think>"])
def test_lm_eval_local_chat_completions_scores_zero_on_a_reasoning_model(
    make_server: Callable[..., EvalchemyTestServer], mode: str, think_end_token: str | None
) -> None:
    """Why the plugin handles reasoning itself: lm-eval sends gsm8k's stop string `Question:`,
    the server applies it inside the thinking, and no answer is left (lm-eval issue 3700),
    even with lm-eval's own think_end_token."""
    srv = make_server(reasoning=mode)
    args: dict[str, Any] = {"model": srv.model, "base_url": srv.chat_completions_url}
    if think_end_token:
        args["think_end_token"] = think_end_token
    out = _lm_eval("local-chat-completions", args, [GSM], apply_chat_template=True)
    for metric in GSM_METRICS:
        assert out["results"][GSM][metric] == 0.0
    # The same server without thinking: lm-eval scores what the plugin scores above.
    plain = make_server()
    args["base_url"] = plain.chat_completions_url
    out = _lm_eval("local-chat-completions", args, [GSM], apply_chat_template=True)
    assert out["results"][GSM]["exact_match,strict-match"] == 0.75


def test_reasoning_off_scores_the_cut_thinking(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(reasoning="content")
    result = _run(
        pytester, srv.chat_completions_url, {GSM: offline_task(GSM)}, "--evalchemy-reasoning=false"
    )
    result.assert_outcomes(passed=1)
    record = _records(pytester)[f"{GSM}/{GSM}"]
    assert record["metrics"][GSM]["exact_match,strict-match"] == 0.0
    assert record["settings"]["reasoning"] is False
    assert "thinking" not in record


def test_plain_model_is_not_taken_for_a_reasoning_one(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = _run(pytester, server.completions_url, {GSM: offline_task(GSM)})
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chat endpoint: reachable; reasoning: not detected*"])
    assert _records(pytester)[f"{GSM}/{GSM}"]["settings"]["reasoning"] is False


def test_thinking_budget_gives_the_thinking_room(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # 60 tokens (bytes here) for the answer: the 100-byte thinking alone does not fit.
    srv = make_server(reasoning="content")
    # No answer of `short` closes its thinking: taken as it is, not failed (test_validity.py).
    short = offline_task(
        GSM, gen_kwargs={"max_gen_toks": 60}, thinking_budget=0, max_invalid_share=1
    )
    roomy = offline_task(GSM, gen_kwargs={"max_gen_toks": 60}, thinking_budget=300)
    result = _run(pytester, srv.completions_url, {"short": short, "roomy": roomy})
    result.assert_outcomes(passed=2)
    records = _records(pytester)
    assert records["short/short"]["metrics"][GSM]["exact_match,strict-match"] == 0.0
    assert records["short/short"]["thinking"]["unfinished"] == 8
    assert records["roomy/roomy"]["metrics"][GSM]["exact_match,strict-match"] == 0.75
    assert records["roomy/roomy"]["thinking"]["unfinished"] == 0
    assert records["roomy/roomy"]["settings"]["thinking_budget"] == 300
    assert "--gen_kwargs max_gen_toks=60" in records["roomy/roomy"]["lm_eval_command"]


# ---------------------------------------------------------------- chat endpoints


def test_chat_endpoint_equals_local_chat_completions(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], tmp_path: Path
) -> None:
    srv = make_server(record_prompts=True)
    tasks = {GSM: offline_task(GSM), "mini_arc": offline_task("mini_arc")}
    result = _run(pytester, srv.chat_completions_url, tasks)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*generation tasks through /v1/chat/completions, loglikelihood tasks through "
            "/v1/completions with the chat template applied*"
        ]
    )
    records = _records(pytester)
    gsm = records[f"{GSM}/{GSM}"]
    assert gsm["lm_eval_command"].startswith("lm-eval run --model local-chat-completions")
    assert "--apply_chat_template" in gsm["lm_eval_command"]
    assert gsm["settings"]["chat_endpoint"] is True
    arc = records["mini_arc/mini_arc"]
    assert arc["settings"]["apply_chat_template"] is True
    assert arc["settings"]["chat_endpoint"] is False
    ours = [p for p in srv.prompts or [] if p[0] == "chat"]
    srv.prompts = []
    theirs = _lm_eval(
        "local-chat-completions",
        {"model": srv.model, "base_url": srv.chat_completions_url},
        [GSM],
        apply_chat_template=True,
    )
    _same_metrics(gsm["metrics"][GSM], theirs["results"][GSM])
    _same_prompts(ours, srv.prompts)


def test_chat_only_server_runs_generation_and_refuses_loglikelihood(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(chat_only=True)
    result = _run(pytester, srv.chat_completions_url, {GSM: offline_task(GSM)})
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*(no /v1/completions served)*"])
    srv.reset_stats()
    result = _run(
        pytester,
        srv.chat_completions_url,
        {GSM: offline_task(GSM), "arc": offline_task("mini_arc")},
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*/v1/completions is not served, and loglikelihood (multiple-choice) tasks need it: "
            "arc/arc. A chat endpoint gives no prompt logprobs*"
        ]
    )
    assert srv.stats()["requests"].get("/v1/chat/completions", 0) <= 1  # the probe only


# ---------------------------------------------------------------- chat templates


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test server's tokenizer as a Hugging Face folder, for lm-eval's local path."""
    return write_hf_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


def test_chat_template_equals_lm_eval_with_a_local_tokenizer(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    hf_tokenizer: Path,
) -> None:
    srv = make_server(record_prompts=True)
    system = "You are a careful assistant."
    tasks = {
        name: offline_task(name, apply_chat_template=True, system_instruction=system)
        for name in ("mini_arc", GSM)
    }
    result = _run(pytester, srv.completions_url, tasks)
    result.assert_outcomes(passed=2)
    records = _records(pytester)
    ours = list(srv.prompts or [])
    srv.prompts = []
    theirs = _lm_eval(
        "local-completions",
        {
            "model": srv.model,
            "base_url": srv.completions_url,
            "tokenizer_backend": "huggingface",
            "tokenizer": str(hf_tokenizer),
        },
        ["mini_arc", GSM],
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        system_instruction=system,
        batch_size=4,
    )
    for name in ("mini_arc", GSM):
        _same_metrics(records[f"{name}/{name}"]["metrics"][name], theirs["results"][name])
        command = records[f"{name}/{name}"]["lm_eval_command"]
        assert "tokenizer_backend=huggingface tokenizer=evalchemy-test-model" in command
        assert f"--apply_chat_template --system_instruction '{system}'" in command
    # The very token ids: template rendered, BOS from the template, no extra special token.
    _same_prompts(ours, srv.prompts)
    assert any(encode("<s><|system|>\n" + system)[:5] == list(p[1][:5]) for p in ours)


def test_run_option_overrides_the_task_key(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(record_prompts=True)
    tasks = {
        "on": offline_task("mini_arc", apply_chat_template=True),
        "off": offline_task("mini_mmlu"),
    }
    result = _run(pytester, srv.completions_url, tasks, "--evalchemy-chat-template=false")
    result.assert_outcomes(passed=2)
    assert not any(
        "<|assistant|>" in bytes(t - 3 for t in p[1] if t > 2).decode() for p in srv.prompts or []
    )
    records = _records(pytester)
    assert records["on/on"]["settings"]["apply_chat_template"] is False
    srv.prompts = []
    pytester.path.joinpath("results").rename(pytester.path / "first")
    result = _run(
        pytester,
        srv.completions_url,
        tasks,
        "--evalchemy-chat-template=true",
        "--evalchemy-fewshot-as-multiturn=false",
    )
    result.assert_outcomes(passed=2)
    records = _records(pytester)
    for key in ("on/on", "off/off"):
        assert records[key]["settings"]["apply_chat_template"] is True
        assert records[key]["settings"]["fewshot_as_multiturn"] is False
        assert (
            "--apply_chat_template --fewshot_as_multiturn false" in records[key]["lm_eval_command"]
        )
    texts = [
        bytes(t - 3 for t in p[1] if t > 2).decode()
        for p in srv.prompts or []
        if len(p[1]) > 20 and not _is_probe(p)
    ]
    # One user turn holds the few-shot example and the question.
    assert texts
    assert all(t.count("<|user|>") == 1 and "<|assistant|>" in t for t in texts)


def test_chat_template_on_a_server_without_one_fails_before_the_run(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(chat_template=None)
    result = _run(
        pytester, srv.completions_url, {"arc": offline_task("mini_arc", apply_chat_template=True)}
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*apply_chat_template is on for arc, but http://127.0.0.1:*/tokenizer_info serves no "
            "chat template. Start vLLM with --chat-template FILE*--evalchemy-chat-template=false)*"
        ]
    )
    # The endpoint check's logprob probe and its canary, nothing else.
    assert srv.stats()["prompts"] == CHECK_COMPLETIONS
    summary = read_summary(pytester.path / "results")
    assert summary["tasks"]["arc/arc"]["status"] == "error"


def test_what_the_check_found_reaches_xdist_workers(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(reasoning="field")
    tasks = {"one": offline_task(GSM), "two": offline_task(GSM, limit=4)}
    result = _run(pytester, srv.chat_completions_url, tasks, "-n", "2")
    result.assert_outcomes(passed=2)
    records = _records(pytester)
    assert records["one/one"]["metrics"][GSM]["exact_match,strict-match"] == 0.75
    assert records["two/two"]["metrics"][GSM]["exact_match,strict-match"] == 0.75
    summary = read_summary(pytester.path / "results")
    assert summary["endpoint_check"]["reasoning_how"] == "reasoning field"
    assert summary["endpoint_check"]["chat_template"] is True
