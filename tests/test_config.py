"""The config model: parsing, validation messages with their locations, and the item plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_evalchemy.core.config import DISABLED_REASON, load_config, normalize_metric, plan_items
from pytest_evalchemy.core.errors import ConfigError

from .helpers import REPO


def _load(tmp_path: Path, text: str, name: str = "cfg.json"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return load_config(path)


def _problems(tmp_path: Path, text: str | bytes, name: str = "cfg.json") -> list[str]:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_seed_config_plan() -> None:
    cfg = load_config(REPO / "configs" / "eval_config.json")
    plan = [(i.benchmark, i.task.key, i.enabled) for i in plan_items(cfg)]
    assert plan == [
        ("arc_easy", "arc_easy", True),
        ("arc_challenge", "arc_challenge", True),
        ("hellaswag", "hellaswag", True),
        ("mmlu", "mmlu", False),  # listed by a disabled benchmark, no task entry
        ("gsm8k", "gsm8k", False),  # disabled task no benchmark lists
    ]
    arc = cfg.task("arc_easy")
    assert (arc.num_fewshot, arc.batch_size, arc.limit) == (25, 1, 1)
    assert [i.reason for i in plan_items(cfg) if not i.enabled] == [DISABLED_REASON] * 2


def test_plan_rules(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        json.dumps(
            {
                "benchmarks": {
                    "reasoning": {"tasks": ["mini_arc", "mini_mmlu", "public_task"]},
                    "off": {"enabled": False, "tasks": ["mini_gsm8k"]},
                },
                "tasks": {
                    "mini_arc": {"num_fewshot": 2, "priority": "low"},
                    "mini_mmlu": {"enabled": False},
                    "alone": {"tasks": ["mini_hellaswag"], "priority": "high"},
                    "mini_gsm8k": {},
                },
            }
        ),
    )
    plan = [(i.key, i.enabled, i.task.configured) for i in plan_items(cfg)]
    assert plan == [
        ("alone/alone", True, True),  # high priority first; unlisted task is its own benchmark
        ("reasoning/mini_mmlu", False, True),
        ("reasoning/public_task", True, False),  # no entry: lm-eval defaults
        ("off/mini_gsm8k", False, True),
        ("reasoning/mini_arc", True, True),  # low priority last
    ]
    public = next(i for i in plan_items(cfg) if i.task.key == "public_task")
    assert (public.task.tasks, public.task.num_fewshot, public.task.limit) == (
        ("public_task",),
        None,
        None,
    )
    alone = next(i for i in plan_items(cfg) if i.task.key == "alone")
    assert alone.keywords == ("alone", "alone", "mini_hellaswag")


def test_yaml_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "tasks:\n  mini_arc:\n    num_fewshot: 3\n    limit: null\n", "cfg.yaml")
    assert cfg.task("mini_arc").num_fewshot == 3
    assert cfg.task("mini_arc").limit is None


def test_thresholds_and_include_paths(tmp_path: Path) -> None:
    (tmp_path / "mytasks").mkdir()
    cfg = _load(
        tmp_path,
        json.dumps(
            {
                "include_paths": ["mytasks"],
                "tasks": {
                    "t": {
                        "thresholds": {
                            "acc": {"min": 0.5},
                            "mini_arc:exact_match,strict-match": {"max": 2},
                        }
                    }
                },
            }
        ),
    )
    assert cfg.include_paths == ((tmp_path / "mytasks").resolve(),)
    assert cfg.lm_eval_include_paths[0].name == "benchmarks"
    assert [(t.metric, t.min, t.max) for t in cfg.task("t").thresholds] == [
        ("acc,none", 0.5, None),
        ("mini_arc:exact_match,strict-match", None, 2),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"tasks": {"a": {"limit": 1},}}',
            "cfg.json: line 1, column 30: JSON syntax error: Expecting property name enclosed in double quotes (a trailing comma",
        ),
        (
            '{"tasks": {"a": {"num_fewshot": "5"}}}',
            'cfg.json: tasks.a.num_fewshot: expected integer or null, got "5"',
        ),
        (
            '{"tasks": {"a": {"num_fewshot": -1}}}',
            "cfg.json: tasks.a.num_fewshot: -1 is out of range (minimum 0)",
        ),
        (
            '{"tasks": {"a": {"fewshot": 5}}}',
            "cfg.json: tasks.a.fewshot: unknown key 'fewshot'; allowed keys: add_bos_token, apply_chat_template, batch_size, description",
        ),
        (
            '{"tasks": {"a": {"limit": 0}}}',
            "cfg.json: tasks.a.limit: invalid limit 0: use a whole number",
        ),
        ('{"tasks": {"a": {"limit": 1.5}}}', "cfg.json: tasks.a.limit: invalid limit 1.5"),
        (
            '{"tasks": {"a": {"batch_size": 0}}}',
            "cfg.json: tasks.a.batch_size: 0 is out of range (minimum 1)",
        ),
        (
            '{"tasks": {"a": {"priority": "urgent"}}}',
            'cfg.json: tasks.a.priority: "urgent" is not one of "high", "medium", "low"',
        ),
        (
            '{"tasks": {"a": {"timeout": 0}}}',
            "cfg.json: tasks.a.timeout: 0 is out of range (exclusiveMinimum 0)",
        ),
        (
            '{"tasks": {"a": {"enabled": "yes"}}}',
            'cfg.json: tasks.a.enabled: expected boolean, got "yes"',
        ),
        ('{"tasks": {"a": {"tasks": []}}}', "cfg.json: tasks.a.tasks: [] should be non-empty"),
        ('{"tasks": {"../evil": {}}}', 'cfg.json: tasks: invalid name "../evil"'),
        ('{"benchmarks": {"b": {"enabled": true}}}', "cfg.json: benchmarks.b: 'tasks' is required"),
        (
            '{"benchmarks": {"b": {"tasks": ["x", "x"]}}}',
            "cfg.json: benchmarks.b.tasks[1]: 'x' is listed twice",
        ),
        ('{"tasks": {"a": {}}, "task": {}}', "cfg.json: task: unknown key 'task'; allowed keys:"),
        ('{"tasks": {"a": {}, "a": {}}}', "cfg.json: key 'a': duplicate key"),
        ("[1, 2]", "cfg.json: (top level): the config must be an object"),
        ("{}", "cfg.json: (top level): no benchmarks and no tasks: nothing to run"),
        ("   \n", "cfg.json: config file is empty"),
        (b"\xff\xfe{}", "cfg.json: byte 0: not UTF-8 text"),
        (
            '{"include_paths": ["nowhere"], "tasks": {"a": {}}}',
            "cfg.json: include_paths[0]: folder",
        ),
    ],
)
def test_bad_configs_name_the_place(tmp_path: Path, text: str | bytes, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, '{"tasks": {"a": {"limit": "x", "num_fewshot": 1.5, "colour": 1}}}'
    )
    assert len(problems) == 3, problems


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "tasks:\n  a: [1, 2\n", "cfg.yml")
    assert "cfg.yml: line 3, column 1: YAML syntax error" in problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found; pass --evalchemy-config"):
        load_config(tmp_path / "nope.json")


def test_normalize_metric() -> None:
    assert normalize_metric("acc") == "acc,none"
    assert normalize_metric("exact_match,strict-match") == "exact_match,strict-match"
    assert normalize_metric("arc_easy:acc") == "arc_easy:acc,none"
