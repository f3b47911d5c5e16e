"""The BOS the model was trained with: each prompt starts the way the model's tokenizer starts a
plain text (``add_bos_token`` auto), a chat template's prompt carries the special tokens it
writes and never two BOS, and the endpoint check reports the tokenizer and refuses a wrong
local tokenizer or echo logprobs off by one, before any item's request.

The test server's ``bos_trained`` model answers every document the other way round when a
prompt does not start with exactly one ``<s>``: a missing or doubled BOS changes the score."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_evalchemy.run.endpoint import CANARY_TEXT
from pytest_evalchemy.run.tokenizer_check import adds_bos, parse_add_bos, resolve_add_bos
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.hf_tokenizer import write_hf_tokenizer
from pytest_evalchemy.testing.server import BOS_ID, CHAT_TEMPLATE, EvalchemyTestServer, encode

from .helpers import (
    check_summary,
    config_option,
    expected,
    offline_task,
    read_run_summary,
    read_summary,
    run_evalchemy,
)

MakeServer = Callable[..., EvalchemyTestServer]
ARC = "mini_arc"
GSM = "mini_gsm8k"
LIMIT = 8


def _tasks(**settings: object) -> dict[str, dict[str, object]]:
    return {name: offline_task(name, limit=LIMIT, **settings) for name in (ARC, GSM)}


def _scores(root: Path) -> dict[str, float]:
    tasks = read_summary(root / "results")["tasks"]
    return {
        ARC: tasks[f"{ARC}/{ARC}"]["metrics"][ARC]["acc,none"],
        GSM: tasks[f"{GSM}/{GSM}"]["metrics"][GSM]["exact_match,strict-match"],
    }


def _right(answer_key: list[AnswerEntry]) -> dict[str, float]:
    return {name: expected(answer_key, name, LIMIT) for name in (ARC, GSM)}


def _token_prompts(srv: EvalchemyTestServer) -> list[tuple[int, ...]]:
    """The items' token prompts (the endpoint check's probe, "Hello world", and its canary, a
    text the server tokenizes, left out)."""
    canary = {tuple(encode(CANARY_TEXT, special)) for special in (True, False)}
    return [
        p
        for kind, p in srv.prompts or []
        if kind == "completions" and len(p) > 12 and tuple(p) not in canary
    ]


# ---------------------------------------------------------------- the rule, pure


def test_adds_bos_needs_exactly_one_bos_before_the_plain_ids() -> None:
    assert adds_bos([1, 5, 6], [5, 6], 1)
    assert not adds_bos([5, 6], [5, 6], 1)  # GPT-2-, Qwen-style
    assert not adds_bos([1, 1, 5, 6], [5, 6], 1)
    assert not adds_bos([2, 5, 6], [5, 6], 1)  # another special token first
    assert adds_bos([7, 5, 6], [5, 6], None)  # the BOS id learnt from the ids


def test_resolve_follows_the_setting_the_tokenizer_and_the_template() -> None:
    from pytest_evalchemy.run.tokenizer_check import TokenizerFacts

    llama = TokenizerFacts("server", "<s>", 1, "</s>", adds_bos=True)
    qwen = TokenizerFacts("server", None, None, "<|endoftext|>", adds_bos=False)
    assert resolve_add_bos("auto", llama, templated=False, tokenized=True) is True
    assert resolve_add_bos("auto", qwen, templated=False, tokenized=True) is False
    # A template writes what it writes: nothing added under auto.
    assert resolve_add_bos("auto", llama, templated=True, tokenized=True) is False
    assert resolve_add_bos("true", qwen, templated=True, tokenized=True) is True
    assert resolve_add_bos("false", llama, templated=False, tokenized=True) is False
    # No token prompts (chat endpoint, no tokenizer): the server decides.
    assert resolve_add_bos("true", llama, templated=False, tokenized=False) is None
    assert resolve_add_bos("auto", None, templated=False, tokenized=True) is None
    assert parse_add_bos(" TRUE ") == "true"
    with pytest.raises(ValueError, match="expected true, false or auto, got 'maybe'"):
        parse_add_bos("maybe")


# ---------------------------------------------------------------- prompts and scores


def test_auto_starts_every_prompt_with_the_bos_the_model_was_trained_with(
    pytester: pytest.Pytester, make_server: MakeServer, answer_key: list[AnswerEntry]
) -> None:
    srv = make_server(bos_trained=True, record_prompts=True)
    result = run_evalchemy(pytester, srv.completions_url, config_option(pytester.path, _tasks()))
    result.assert_outcomes(passed=2)
    assert _scores(pytester.path) == _right(answer_key)
    prompts = _token_prompts(srv)
    assert len(prompts) >= 2 * LIMIT
    assert all(p[0] == BOS_ID and p[1] != BOS_ID for p in prompts)
    summary = check_summary(read_summary(pytester.path / "results"))
    for key in (f"{ARC}/{ARC}", f"{GSM}/{GSM}"):
        record = summary["tasks"][key]
        assert record["settings"]["add_bos_token"] is True
        # lm-eval's remote tokenizer adds no BOS: the command names the model's tokenizer.
        command = record["lm_eval_command"]
        assert "tokenizer_backend=huggingface" in command
        assert "add_bos_token=True" in command
    tokenizer = summary["endpoint_check"]["tokenizer"]
    assert tokenizer["bos_token"] == "<s>"
    assert tokenizer["adds_bos"] is True
    assert tokenizer["eos_token"] == "</s>"
    assert tokenizer["chat_template_sha256"] == hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()
    assert tokenizer["sends"].startswith("prompts start with one <s>, as the tokenizer starts")
    assert summary["settings"]["add_bos_token"] == "auto"
    result.stdout.fnmatch_lines(
        [
            "evalchemy: tokenizer (server): BOS <s> (added to a text), EOS </s>, chat template "
            "sha256 *; prompts start with one <s>, as the tokenizer starts a text*"
        ]
    )


def test_without_the_bos_the_trained_model_scores_the_other_way(
    pytester: pytest.Pytester, make_server: MakeServer, answer_key: list[AnswerEntry]
) -> None:
    """What lm-eval's API models send today (no BOS on token prompts), asked for by name."""
    srv = make_server(bos_trained=True, record_prompts=True)
    tasks = _tasks(add_bos_token=False)
    result = run_evalchemy(pytester, srv.completions_url, config_option(pytester.path, tasks))
    result.assert_outcomes(passed=2)
    right = _right(answer_key)
    assert _scores(pytester.path) == {name: 1 - value for name, value in right.items()}
    assert right[ARC] != 0.5  # the two differ
    assert all(p[0] != BOS_ID for p in _token_prompts(srv))
    record = read_summary(pytester.path / "results")["tasks"][f"{ARC}/{ARC}"]
    assert record["settings"]["add_bos_token"] is False
    assert "add_bos_token=False" in record["lm_eval_command"]
    assert "tokenizer_backend=remote" in record["lm_eval_command"]


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_the_run_wide_option_overrides_the_task_key(
    pytester: pytest.Pytester,
    make_server: MakeServer,
    answer_key: list[AnswerEntry],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    srv = make_server(bos_trained=True)
    args = []
    if how == "flag":
        args.append("--evalchemy-add-bos-token=false")
    elif how == "env":
        monkeypatch.setenv("EVALCHEMY_ADD_BOS_TOKEN", "false")
    else:
        pytester.makeini("[pytest]\nevalchemy_add_bos_token = false\n")
    cfg = config_option(pytester.path, _tasks(add_bos_token=True))
    run_evalchemy(pytester, srv.completions_url, cfg, *args).assert_outcomes(passed=2)
    right = _right(answer_key)
    assert _scores(pytester.path) == {name: 1 - value for name, value in right.items()}
    summary = read_summary(pytester.path / "results")
    assert summary["settings"]["add_bos_token"] == "false"
    assert summary["endpoint_check"]["tokenizer"]["sends"] == (
        "prompts start without a BOS (add_bos_token false)"
    )


def test_a_tokenizer_without_bos_gets_none(
    pytester: pytest.Pytester, make_server: MakeServer, answer_key: list[AnswerEntry]
) -> None:
    srv = make_server(adds_bos=False, record_prompts=True)
    result = run_evalchemy(pytester, srv.completions_url, config_option(pytester.path, _tasks()))
    result.assert_outcomes(passed=2)
    assert _scores(pytester.path) == _right(answer_key)
    assert all(p[0] != BOS_ID for p in _token_prompts(srv))
    summary = read_summary(pytester.path / "results")
    assert summary["endpoint_check"]["tokenizer"]["adds_bos"] is False
    assert summary["tasks"][f"{ARC}/{ARC}"]["settings"]["add_bos_token"] is False
    result.stdout.fnmatch_lines(
        [
            "evalchemy: tokenizer (server): BOS <s> (not added to a text), EOS </s>, *; prompts "
            "start without a BOS, as the tokenizer starts a text"
        ]
    )


@pytest.mark.parametrize("setting", ["auto", True])
def test_a_template_that_writes_the_bos_gets_exactly_one(
    pytester: pytest.Pytester,
    make_server: MakeServer,
    answer_key: list[AnswerEntry],
    setting: str | bool,
) -> None:
    """The test server's template starts with ``{{ bos_token }}``: auto adds none (the template
    wrote it), true keeps the one there (never two, which the trained model would score the
    other way)."""
    srv = make_server(bos_trained=True, record_prompts=True)
    tasks = _tasks(apply_chat_template=True, add_bos_token=setting)
    result = run_evalchemy(pytester, srv.completions_url, config_option(pytester.path, tasks))
    result.assert_outcomes(passed=2)
    prompts = _token_prompts(srv)
    assert prompts
    assert all(p[0] == BOS_ID and p[1] != BOS_ID for p in prompts)
    assert _scores(pytester.path)[ARC] == _right(answer_key)[ARC]


def test_a_matching_local_tokenizer_is_used_and_reported(
    pytester: pytest.Pytester, make_server: MakeServer, answer_key: list[AnswerEntry]
) -> None:
    tokenizer = write_hf_tokenizer(pytester.path / "tok")
    srv = make_server(bos_trained=True, record_prompts=True)
    cfg = config_option(pytester.path, _tasks())
    result = run_evalchemy(pytester, srv.completions_url, cfg, f"--evalchemy-tokenizer={tokenizer}")
    result.assert_outcomes(passed=2)
    assert _scores(pytester.path) == _right(answer_key)
    assert all(p[0] == BOS_ID and p[1] != BOS_ID for p in _token_prompts(srv))
    found = read_summary(pytester.path / "results")["endpoint_check"]["tokenizer"]
    assert found["source"] == "local"
    assert found["adds_bos"] is True


# ---------------------------------------------------------------- refused before any request


def _other_revision(folder: Path) -> Path:
    """The test server's tokenizer with the ids of "o" and "l" swapped: another revision."""
    path = write_hf_tokenizer(folder) / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["o"], vocab["l"] = vocab["l"], vocab["o"]
    path.write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_a_local_tokenizer_that_differs_from_the_server_is_refused(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server()
    tokenizer = _other_revision(pytester.path / "tok")
    cfg = config_option(pytester.path, _tasks())
    result = run_evalchemy(pytester, srv.completions_url, cfg, f"--evalchemy-tokenizer={tokenizer}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--evalchemy-tokenizer {tokenizer}: its ids for the probe text 'Hello world' differ "
            "from the server's /tokenize from token 2 on*another tokenizer or another revision*"
        ]
    )
    assert srv.stats()["completions"] == 0


def test_echo_logprobs_off_by_one_are_refused(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server(echo_off_by_one=True)
    result = run_evalchemy(pytester, srv.completions_url, config_option(pytester.path, _tasks()))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*returns 11 echo logprobs for a prompt of 11 tokens and 1 generated: one per token "
            "expected. A server that adds a BOS to token prompts*"
        ]
    )
    assert srv.stats()["completions"] == 1  # the check's probe only


@pytest.mark.parametrize("where", ["config", "flag"])
def test_a_bad_value_is_one_line_before_any_request(
    pytester: pytest.Pytester, make_server: MakeServer, where: str
) -> None:
    srv = make_server()
    if where == "config":
        cfg = config_option(pytester.path, {ARC: offline_task(ARC, add_bos_token="maybe")})
        result = run_evalchemy(pytester, srv.completions_url, cfg)
        result.stderr.fnmatch_lines(["*add_bos_token*maybe*"])
    else:
        cfg = config_option(pytester.path, {ARC: offline_task(ARC)})
        result = run_evalchemy(pytester, srv.completions_url, cfg, "--evalchemy-add-bos-token=1")
        result.stderr.fnmatch_lines(
            ["*--evalchemy-add-bos-token: expected true, false or auto, got '1'"]
        )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert srv.stats()["completions"] == 0


# ---------------------------------------------------------------- the baseline


def test_a_changed_bos_is_not_like_for_like(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server()
    tasks = {ARC: offline_task(ARC, limit=LIMIT)}
    cfg = config_option(pytester.path, tasks)
    run_evalchemy(pytester, srv.completions_url, cfg, "--evalchemy-run-id=base").assert_outcomes(
        passed=1
    )
    baseline = pytester.path / "results" / "base"
    result = run_evalchemy(
        pytester,
        srv.completions_url,
        cfg,
        "--evalchemy-run-id=now",
        "--evalchemy-add-bos-token=false",
        f"--evalchemy-baseline={baseline}",
    )
    result.stdout.fnmatch_lines(
        [
            f"*note: {ARC}/{ARC}: not like for like with the baseline (base): add_bos_token true -> false*"
        ]
    )
    notes = read_run_summary(pytester.path / "results", "now")["gate"]["notes"]
    assert any("add_bos_token true -> false" in n for n in notes)


def test_behind_a_chat_endpoint_the_header_says_what_the_server_does(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server()
    tasks = {GSM: offline_task(GSM, limit=LIMIT)}
    result = run_evalchemy(pytester, srv.chat_completions_url, config_option(pytester.path, tasks))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "evalchemy: chat endpoint: the server renders the messages with its template and "
            "tokenizes them; vLLM adds no special token the template does not write "
            "(add_bos_token does not apply)"
        ]
    )
    record = read_summary(pytester.path / "results")["tasks"][f"{GSM}/{GSM}"]
    assert record["settings"]["chat_endpoint"] is True
    assert "add_bos_token" not in record["settings"]
    assert "add_bos_token" not in record["lm_eval_command"]
