"""The chat and reasoning keys and options: bad values give one line naming the place, before
any request; a changed chat setting is not like for like with a baseline; the dry run shows
what would be sent. Also the reasoning split itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_evalchemy.cli import frontend as cli
from pytest_evalchemy.core.config import parse_config
from pytest_evalchemy.core.errors import ConfigError
from pytest_evalchemy.judge.baseline import comparability_problems
from pytest_evalchemy.run.reasoning import Split, cut_at_stops, split_thinking
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import offline_task, write_config

BAD_TASK_KEYS = [
    ({"apply_chat_template": ""}, "tasks.a.apply_chat_template: must not be empty"),
    ({"apply_chat_template": 3}, "tasks.a.apply_chat_template: expected boolean or string, got 3"),
    ({"system_instruction": 5}, "tasks.a.system_instruction: expected string or null, got 5"),
    ({"fewshot_as_multiturn": "yes"}, 'tasks.a.fewshot_as_multiturn: expected boolean, got "yes"'),
    ({"reasoning": "maybe"}, 'tasks.a.reasoning: "maybe" is not one of true, false, "auto"'),
    ({"think_end_token": ""}, "tasks.a.think_end_token: must not be empty"),
    ({"thinking_budget": -1}, "tasks.a.thinking_budget: -1 is out of range (minimum 0)"),
    ({"thinking_budget": 1.5}, "tasks.a.thinking_budget: expected integer, got 1.5"),
    ({"gen_kwargs": "x"}, 'tasks.a.gen_kwargs: expected object, got "x"'),
    (
        {"gen_kwargs": {"max_gen_tokens": 5}},
        "tasks.a.gen_kwargs.max_gen_tokens: unknown key 'max_gen_tokens'; allowed keys: do_sample,",
    ),
    ({"gen_kwargs": {"temperature": -1}}, "tasks.a.gen_kwargs.temperature: -1 is out of range"),
    (
        {"gen_kwargs": {"until": [""]}},
        'tasks.a.gen_kwargs.until: invalid stop strings [""]: use a string or a list of non-empty',
    ),
]


@pytest.mark.parametrize(("task", "message"), BAD_TASK_KEYS, ids=[str(t) for t, _ in BAD_TASK_KEYS])
def test_bad_task_keys_name_the_place(task: dict, message: str) -> None:
    path = Path("cfg.json")
    with pytest.raises(ConfigError) as info:
        parse_config(path, {"tasks": {"a": {"tasks": ["mini_arc"], **task}}})
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problems[0] == f"cfg.json: {message}" or problems[0].startswith(f"cfg.json: {message}")


def test_good_task_keys_are_kept() -> None:
    config = parse_config(
        Path("cfg.json"),
        {
            "tasks": {
                "a": {
                    "apply_chat_template": "tool_use",
                    "system_instruction": "Be brief.",
                    "fewshot_as_multiturn": False,
                    "gen_kwargs": {"until": ["\n\n"], "max_gen_toks": 64, "do_sample": False},
                    "reasoning": "auto",
                    "think_end_token": "</reasoning>",
                    "thinking_budget": 512,
                }
            }
        },
    )
    task = config.tasks[0]
    assert task.apply_chat_template == "tool_use"
    assert task.gen_kwargs == (("until", ["\n\n"]), ("max_gen_toks", 64), ("do_sample", False))
    assert (task.reasoning, task.think_end_token, task.thinking_budget) == (
        "auto",
        "</reasoning>",
        512,
    )
    assert (
        parse_config(Path("c.json"), {"tasks": {"b": {"reasoning": True}}}).tasks[0].reasoning
        == "true"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--evalchemy-reasoning=maybe",),
            "--evalchemy-reasoning: expected true, false or auto, got 'maybe'",
        ),
        (
            ("--evalchemy-thinking-budget=-3",),
            "--evalchemy-thinking-budget: expected a whole number of tokens (0 or more), got '-3'",
        ),
        (
            ("--evalchemy-thinking-budget=lots",),
            "--evalchemy-thinking-budget: expected a whole number of tokens",
        ),
        (
            ("--evalchemy-fewshot-as-multiturn=perhaps",),
            "--evalchemy-fewshot-as-multiturn: expected true or false, got 'perhaps'",
        ),
        (
            ("--evalchemy-chat-template= ",),
            "--evalchemy-chat-template: expected true, false or a template name, got an empty value",
        ),
        (
            ("--evalchemy-think-end-token= ",),
            "--evalchemy-think-end-token: expected the text that ends the thinking",
        ),
    ],
)
def test_bad_options_name_the_flag_before_any_request(
    pytester: pytest.Pytester, make_server, args: tuple[str, ...], message: str
) -> None:
    srv: EvalchemyTestServer = make_server()
    cfg = write_config(pytester.path / "eval.json", {"tasks": {"a": offline_task("mini_arc")}})
    result = pytester.runpytest(
        f"--evalchemy-endpoint={srv.completions_url}", f"--evalchemy-config={cfg}", *args
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"ERROR: {message}*"])
    assert srv.stats()["requests"] == {}


def test_bad_ini_and_environment_values_name_their_place(
    pytester: pytest.Pytester, make_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv: EvalchemyTestServer = make_server()
    cfg = write_config(pytester.path / "eval.json", {"tasks": {"a": offline_task("mini_arc")}})
    pytester.makeini("[pytest]\nevalchemy_thinking_budget = many\n")
    result = pytester.runpytest(
        f"--evalchemy-endpoint={srv.completions_url}", f"--evalchemy-config={cfg}"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "ERROR: --evalchemy-thinking-budget (from evalchemy_thinking_budget in *tox.ini): expected a whole number*"
        ]
    )
    monkeypatch.setenv("EVALCHEMY_REASONING", "sometimes")
    result = pytester.runpytest(
        f"--evalchemy-endpoint={srv.completions_url}", f"--evalchemy-config={cfg}"
    )
    result.stderr.fnmatch_lines(
        [
            "ERROR: --evalchemy-reasoning (from the environment variable EVALCHEMY_REASONING): "
            "expected true, false or auto, got 'sometimes'"
        ]
    )
    assert srv.stats()["requests"] == {}


def test_a_changed_chat_setting_is_not_like_for_like() -> None:
    old = {"settings": {"num_fewshot": 1, "limit": 8}}  # a record from before chat settings
    same = {
        "settings": {"num_fewshot": 1, "limit": 8, "apply_chat_template": False, "reasoning": False}
    }
    assert comparability_problems(same, old) == []
    templated = {"settings": {**same["settings"], "apply_chat_template": True}}
    assert comparability_problems(templated, old) == ["apply_chat_template false -> true"]
    thinking = {
        "settings": {**templated["settings"], "reasoning": True, "think_end_token": "</think>"}
    }
    assert comparability_problems(thinking, templated) == [
        "reasoning false -> true",
        'think_end_token default -> "</think>"',
    ]


def test_dry_run_shows_the_chat_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "eval.json",
        {
            "tasks": {
                "mini_arc": {
                    "tasks": ["mini_arc"],
                    "apply_chat_template": True,
                    "system_instruction": "Be brief.",
                },
                "mini_gsm8k": {"tasks": ["mini_gsm8k"], "reasoning": True},
            }
        },
    )
    args = ["--dry-run", "--endpoint", "http://h:8000/v1/chat/completions", "--config", str(config)]
    assert cli.main([*args, "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    arc = lines[lines.index("# mini_arc/mini_arc") + 1 : lines.index("# mini_arc/mini_arc") + 3]
    assert (
        arc[0]
        == "# the server's chat template on /v1/completions; few-shot as turns; system instruction 'Be brief.'"
    )
    assert "tokenizer_backend=huggingface" in arc[1]
    assert "--apply_chat_template --system_instruction 'Be brief.'" in arc[1]
    gsm = lines[
        lines.index("# mini_gsm8k/mini_gsm8k") + 1 : lines.index("# mini_gsm8k/mini_gsm8k") + 3
    ]
    assert gsm[0].startswith(
        "# generation through /v1/chat/completions; few-shot as turns; reasoning: no stop strings sent"
    )
    assert gsm[1].startswith("lm-eval run --model local-chat-completions")
    assert "base_url=http://h:8000/v1/chat/completions" in gsm[1]


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("<think>hmm</think> 42", Split("hmm", "42")),
        ("\n<think>a</think>b</think>\n\nc", Split("a</think>b", "c")),
        ("<think>still going", Split("still going", "", finished=False)),
        (" plain answer", Split("", " plain answer")),
        ("no start</think>answer", Split("no start", "answer")),
    ],
)
def test_split_thinking(text: str, split: Split) -> None:
    assert split_thinking(text) == split


def test_cut_at_stops_takes_the_earliest() -> None:
    assert cut_at_stops("a\n\nQuestion: b", ["Question:", "\n\n"]) == "a"
    assert cut_at_stops("abc", "x") == "abc"
    assert cut_at_stops("abc", None) == "abc"
    assert json.dumps(cut_at_stops("x", [""])) == '"x"'
