"""The plugin end to end: real pytest runs (pytester), real lm-eval, a real HTTP test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_evalchemy.core.record import FORMAT_VERSION
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    CHECK_COMPLETIONS,
    OFFLINE_CONFIG,
    REPO,
    check_summary,
    config_option,
    expected,
    offline_task,
    read_summary,
    run_evalchemy,
    write_config,
)


@pytest.mark.lower_bounds
def test_offline_config_passes_with_exact_scores(
    pytester: pytest.Pytester, server: EvalchemyTestServer, answer_key: list[AnswerEntry]
) -> None:
    result = run_evalchemy(
        pytester,
        server.completions_url,
        f"--evalchemy-config={OFFLINE_CONFIG}",
        "--evalchemy-run-id=r1",
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*evalchemy scores*",
            "benchmark*task*metric*value*status*time",
            "mini_arc*mini_arc*acc,none*0.7500 [[]0.5313, 0.8881[]]*passed*",
            "mini_gsm8k*mini_gsm8k*exact_match,strict-match*0.8000 [[]0.4902, 0.9433[]]*passed*",
            "95% intervals: wilson (a mean of 0/1 scores)",
            "summary: *r1/evalchemy_summary_r1.json",
        ]
    )
    summary = check_summary(read_summary(pytester.path / "results"))
    assert summary["format_version"] == FORMAT_VERSION == 1
    assert summary["run_id"] == "r1"
    assert summary["model"] == "evalchemy-test-model"
    assert summary["endpoint"] == server.completions_url
    assert summary["totals"]["passed"] == 4
    assert list(summary["tasks"]) == [
        "mini_arc/mini_arc",
        "mini_hellaswag/mini_hellaswag",
        "mini_mmlu/mini_mmlu",
        "mini_gsm8k/mini_gsm8k",
    ]
    config = json.loads(OFFLINE_CONFIG.read_text())["tasks"]
    for key, record in summary["tasks"].items():
        task = key.split("/")[1]
        limit = config[task]["limit"]
        metrics = record["metrics"][task]
        score = metrics["exact_match,strict-match"] if task == "mini_gsm8k" else metrics["acc,none"]
        assert score == expected(answer_key, task, limit), key
        assert record["n_samples"][task]["effective"] == limit
        assert record["status"] == "passed"
        assert record["settings"]["num_fewshot"] == config[task]["num_fewshot"]
    assert summary["tasks"]["mini_arc/mini_arc"]["metrics"]["mini_arc"]["acc_stderr,none"] > 0
    assert set(summary["versions"]) == {"python", "pytest", "lm_eval", "pytest_evalchemy"}
    assert len(summary["config"]["sha256"]) == 64


@pytest.mark.lower_bounds
def test_results_layout(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    cfg = config_option(
        pytester.path,
        {
            "mini_arc": offline_task("mini_arc"),
            "mini_gsm8k": offline_task("mini_gsm8k", log_samples=True, limit=4),
        },
    )
    run_evalchemy(
        pytester, server.completions_url, cfg, "--evalchemy-run-id=lay", "--evalchemy-output=out"
    ).assert_outcomes(passed=2)
    run = pytester.path / "out" / "lay"
    for name in (
        "evalchemy_lay.log",
        "evalchemy_errors_lay.log",
        "evalchemy_summary_lay.json",
        "mini_arc_results.json",
        "mini_arc_benchmark.log",
        "mini_gsm8k_results.json",
        "mini_gsm8k_benchmark.log",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "mini_arc_results.json").read_text())
    assert results["results"]["mini_arc"]["acc,none"] == 0.75
    assert results["n-shot"] == {"mini_arc": 1}
    assert results["config"]["model"] == "evalchemy-completions"  # local-completions + prefetch
    assert "Building contexts for mini_arc" in (run / "mini_arc_benchmark.log").read_text()
    samples = (
        (run / "items" / "mini_gsm8k" / "mini_gsm8k" / "samples_mini_gsm8k.jsonl")
        .read_text()
        .splitlines()
    )
    # One line per document and filter: 4 documents x 2 filters (strict, flexible).
    assert len(samples) == 8
    assert {json.loads(line)["doc_id"] for line in samples} == {0, 1, 2, 3}
    assert json.loads(samples[0])["doc"]["question"]
    log = (run / "evalchemy_lay.log").read_text()
    assert "PASSED      mini_arc/mini_arc" in log
    assert (run / "evalchemy_errors_lay.log").read_text() == ""


def test_metrics_equal_lm_eval_simple_evaluate(
    pytester: pytest.Pytester,
    server: EvalchemyTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config_option(
        pytester.path, {"mini_hellaswag": offline_task("mini_hellaswag", num_fewshot=2, limit=12)}
    )
    run_evalchemy(pytester, server.completions_url, cfg).assert_outcomes(passed=1)
    ours = read_summary(pytester.path / "results")["tasks"]["mini_hellaswag/mini_hellaswag"][
        "metrics"
    ]

    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    direct = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": server.model,
            "base_url": server.completions_url,
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "max_length": 16384,
        },
        tasks=["mini_hellaswag"],
        num_fewshot=2,
        batch_size=4,
        limit=12,
        task_manager=TaskManager(include_path=str(REPO / "benchmarks"), include_defaults=False),
    )
    theirs = {
        k: float(v)
        for k, v in direct["results"]["mini_hellaswag"].items()
        if k not in ("alias", "name", "sample_len")
    }
    assert ours == {"mini_hellaswag": theirs}


def test_k_selects_by_benchmark_task_and_lm_eval_name(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(
        pytester.path,
        {
            "quick": offline_task("mini_mmlu", limit=4),
            "mini_arc": offline_task("mini_arc", limit=4),
        },
        benchmarks={"knowledge": {"tasks": ["quick"]}, "science": {"tasks": ["mini_arc"]}},
    )
    result = run_evalchemy(pytester, server.completions_url, cfg, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["eval.json::knowledge::quick", "eval.json::science::mini_arc"])
    for keyword, selected in (
        ("knowledge", "quick"),
        ("quick", "quick"),
        ("mini_mmlu", "quick"),
        ("science", "mini_arc"),
    ):
        result = run_evalchemy(pytester, server.completions_url, cfg, "-k", keyword, "-v")
        result.assert_outcomes(passed=1, deselected=1)
        result.stdout.fnmatch_lines([f"*::{selected} PASSED*"])


def test_disabled_items_are_skipped_with_reason(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(
        pytester.path,
        {
            "mini_arc": offline_task("mini_arc", limit=2),
            "mini_mmlu": offline_task("mini_mmlu", enabled=False),
            "mini_gsm8k": offline_task("mini_gsm8k", enabled=False),
        },
        benchmarks={
            "b1": {"tasks": ["mini_arc", "mini_mmlu"]},
            "b2": {"enabled": False, "tasks": ["mini_hellaswag"]},
        },
    )
    result = run_evalchemy(pytester, server.completions_url, cfg, "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["SKIPPED [[]3[]] eval.json: disabled in config"])
    summary = read_summary(pytester.path / "results")
    assert {k: v["status"] for k, v in summary["tasks"].items()} == {
        "b1/mini_arc": "passed",
        "b1/mini_mmlu": "skipped",
        "b2/mini_hellaswag": "skipped",
        "mini_gsm8k/mini_gsm8k": "skipped",
    }
    assert summary["tasks"]["b2/mini_hellaswag"]["message"] == "disabled in config"


@pytest.mark.lower_bounds
def test_threshold_failure_shows_table_not_traceback(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(
        pytester.path,
        {
            "mini_arc": offline_task(
                "mini_arc", thresholds={"acc": {"min": 0.9}, "acc_norm": {"min": 0.5}}
            )
        },
    )
    result = run_evalchemy(pytester, server.completions_url, cfg, "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*mini_arc/mini_arc: 1 of 2 threshold check(s) failed",
            "task*metric*value*stderr*threshold*verdict",
            "mini_arc*acc,none*0.7500*>= 0.9*FAIL",
            "mini_arc*acc_norm,none*0.7500*>= 0.5*pass",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["status"] == "failed"
    assert [c["passed"] for c in record["checks"]] == [False, True]
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="mini_arc:acc,none" value="0.75"' in junit
    assert '<property name="evalchemy_status" value="failed"' in junit
    # The command line overrides: a lower bound that passes replaces the config's 0.9.
    run_evalchemy(
        pytester, server.completions_url, cfg, "--evalchemy-threshold=mini_arc:acc>=0.7"
    ).assert_outcomes(passed=1)
    result = run_evalchemy(
        pytester,
        server.completions_url,
        config_option(pytester.path, {"mini_arc": offline_task("mini_arc")}),
        "--evalchemy-threshold=mini_arc:acc>=0.7",
    )
    result.assert_outcomes(passed=1)


def test_threshold_on_unknown_metric_names_the_produced_ones(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(
        pytester.path,
        {"mini_arc": offline_task("mini_arc", limit=2, thresholds={"f1": {"min": 0.1}})},
    )
    result = run_evalchemy(pytester, server.completions_url, cfg)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*no lm-eval task reported f1,none; reported: acc,none, acc_norm,none*"]
    )


def test_limit_and_batch_size_overrides(
    pytester: pytest.Pytester, server: EvalchemyTestServer, answer_key: list[AnswerEntry]
) -> None:
    cfg = config_option(
        pytester.path, {"mini_mmlu": offline_task("mini_mmlu", limit=None, num_fewshot=0)}
    )
    run_evalchemy(
        pytester, server.completions_url, cfg, "--evalchemy-limit=6", "--evalchemy-batch-size=2"
    ).assert_outcomes(passed=1)
    record = read_summary(pytester.path / "results")["tasks"]["mini_mmlu/mini_mmlu"]
    assert record["n_samples"]["mini_mmlu"] == {"original": 48, "effective": 6}
    assert record["settings"]["batch_size"] == 2
    assert record["metrics"]["mini_mmlu"]["acc,none"] == expected(answer_key, "mini_mmlu", 6)


@pytest.mark.parametrize(
    ("content", "expected_line"),
    [
        (
            '{"tasks": {"mini_arc": {"limit": 1},}}',
            "*eval.json: line 1, column 37: JSON syntax error*trailing comma*",
        ),
        (
            '{"tasks": {"mini_arc": {"num_fewshot": "five"}}}',
            '*eval.json: tasks.mini_arc.num_fewshot: expected integer or null, got "five"',
        ),
        (
            '{"tasks": {"mini_arc": {"shots": 1}}}',
            "*eval.json: tasks.mini_arc.shots: unknown key 'shots'*",
        ),
    ],
)
def test_bad_config_is_a_usage_error(
    pytester: pytest.Pytester, server: EvalchemyTestServer, content: str, expected_line: str
) -> None:
    path = write_config(pytester.path / "eval.json", content)
    result = run_evalchemy(pytester, server.completions_url, f"--evalchemy-config={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid evalchemy config:", expected_line])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert not (pytester.path / "results").exists()


def test_missing_config(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    result = run_evalchemy(pytester, server.completions_url, "--evalchemy-config=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*nope.json: config file not found; pass --evalchemy-config PATH*"]
    )


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "..", ""])
def test_unsafe_run_id_is_refused(
    pytester: pytest.Pytester, server: EvalchemyTestServer, run_id: str
) -> None:
    result = run_evalchemy(
        pytester,
        server.completions_url,
        f"--evalchemy-config={OFFLINE_CONFIG}",
        f"--evalchemy-run-id={run_id}",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--evalchemy-run-id: run id * is not a safe folder name*"])


def test_endpoint_down_stops_at_once_with_every_item_error(pytester: pytest.Pytester) -> None:
    cfg = config_option(
        pytester.path,
        {"mini_arc": offline_task("mini_arc"), "mini_mmlu": offline_task("mini_mmlu")},
    )
    result = run_evalchemy(
        pytester, "http://127.0.0.1:9/v1/completions", cfg, "--evalchemy-run-id=down"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: evalchemy endpoint check failed: cannot connect to http://127.0.0.1:9/v1/models*"]
    )
    summary = json.loads(
        (pytester.path / "results" / "down" / "evalchemy_summary_down.json").read_text()
    )
    assert {k: v["status"] for k, v in summary["tasks"].items()} == {
        "mini_arc/mini_arc": "error",
        "mini_mmlu/mini_mmlu": "error",
    }
    assert summary["totals"]["error"] == 2


@pytest.mark.parametrize(
    ("switches", "args", "message"),
    [
        (
            {"no_tokenizer_endpoints": True},
            (),
            "*no tokenizer for*Start vLLM with --enable-tokenizer-info-endpoint, or pass --evalchemy-tokenizer*",
        ),
        ({"null_logprobs": True}, (), "*returns no prompt logprobs*would score at chance*"),
        (
            {"chat_only": True},
            (),
            "*one-token completion:*HTTP 404*expected a vLLM OpenAI-compatible server*",
        ),
        (
            {},
            ("--evalchemy-model=other",),
            "*model 'other' is not served by*it serves: evalchemy-test-model*",
        ),
        ({"api_key": "s3cret"}, (), "*refused the API key*set EVALCHEMY_API_KEY*"),
    ],
)
def test_endpoint_check_refuses_unusable_servers(
    pytester: pytest.Pytester, make_server, switches: dict, args: tuple, message: str
) -> None:
    srv = make_server(**switches)
    cfg = config_option(pytester.path, {"mini_arc": offline_task("mini_arc")})
    result = run_evalchemy(pytester, srv.completions_url, cfg, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    # Only the check's own requests (its probe, its canary); no evaluation request.
    assert srv.stats()["completions"] <= CHECK_COMPLETIONS


def test_generation_only_run_needs_no_tokenizer(
    pytester: pytest.Pytester, make_server, answer_key: list[AnswerEntry]
) -> None:
    srv = make_server(no_tokenizer_endpoints=True)
    cfg = config_option(pytester.path, {"mini_gsm8k": offline_task("mini_gsm8k", limit=4)})
    run_evalchemy(pytester, srv.completions_url, cfg).assert_outcomes(passed=1)
    metrics = read_summary(pytester.path / "results")["tasks"]["mini_gsm8k/mini_gsm8k"]["metrics"][
        "mini_gsm8k"
    ]
    assert metrics["exact_match,strict-match"] == expected(answer_key, "mini_gsm8k", 4)


def test_api_key_is_sent_and_never_written(
    pytester: pytest.Pytester, make_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = make_server(api_key="sk-very-secret-value")
    monkeypatch.setenv("EVALCHEMY_API_KEY", "sk-very-secret-value")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = config_option(
        pytester.path, {"mini_arc": offline_task("mini_arc", limit=2, log_samples=True)}
    )
    result = run_evalchemy(pytester, srv.completions_url, cfg, "--junitxml=j.xml")
    result.assert_outcomes(passed=1)
    assert "sk-very-secret-value" not in result.stdout.str() + result.stderr.str()
    for path in [*pytester.path.rglob("*")]:
        if path.is_file() and path.suffix != ".db":
            assert "sk-very-secret-value" not in path.read_text(errors="replace"), path


@pytest.mark.lower_bounds
def test_without_endpoint_the_plugin_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    # A config where the plugin would look for one: without an endpoint it stays unread.
    (pytester.path / "configs").mkdir()
    write_config(pytester.path / "configs" / "eval_config.json", {"tasks": {"mini_arc": {}}})
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "results").exists()


# What a project that does not use the plugin must not pay for at start-up.
HEAVY = ("requests", "urllib3", "yaml", "jsonschema", "lm_eval", "scipy", "aiohttp", "numpy")


@pytest.mark.lower_bounds
def test_without_endpoint_the_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    # The modules a plain run loaded, with the plugin and without it (other plugins of this
    # environment may load some of them: only the difference is the plugin's).
    pytester.makeconftest(
        "import sys\n"
        "def pytest_unconfigure(config):\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    print('HEAVY=' + ','.join(heavy))\n"
    )
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")

    def heavy(*args: str) -> set[str]:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args)
        line = next(x for x in result.outlines if x.startswith("HEAVY="))
        return set(filter(None, line.removeprefix("HEAVY=").split(",")))

    assert heavy() - heavy("-p", "no:evalchemy") == set()
    # With an endpoint the plugin is loaded (so the check above can fail): an unreachable one
    # ends the run at the endpoint check, after the plugin's imports.
    assert {"requests", "yaml"} <= heavy("--evalchemy-endpoint=http://127.0.0.1:9/v1/completions")


def test_paths_on_the_command_line_run_beside_the_config(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    pytester.makepyfile(test_mine="def test_mine():\n    assert 1 + 1 == 2\n")
    cfg = config_option(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)})
    result = run_evalchemy(pytester, server.completions_url, cfg, "test_mine.py", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*test_mine.py::test_mine PASSED*", "*eval.json::mini_arc::mini_arc PASSED*"]
    )


def test_config_outside_rootdir(
    pytester: pytest.Pytester, server: EvalchemyTestServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = write_config(
        elsewhere / "cfg.json", {"tasks": {"mini_arc": offline_task("mini_arc", limit=2)}}
    )
    result = run_evalchemy(pytester, server.completions_url, f"--evalchemy-config={path}", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["../elsewhere*/cfg.json::mini_arc::mini_arc PASSED*"])


def test_collect_only_is_light(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    cfg = config_option(pytester.path, {f"t{i}": offline_task("mini_arc") for i in range(50)})
    pytester.makeconftest(
        "import sys\n"
        "def pytest_collection_finish(session):\n"
        "    print('LM_EVAL_IMPORTED', 'lm_eval' in sys.modules)\n"
    )
    before = server.stats()["completions"]
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", cfg, "--collect-only", "-q", "-s"
    )
    result.stdout.fnmatch_lines(["LM_EVAL_IMPORTED False", "50 tests collected*"])
    assert server.stats()["completions"] == before  # no endpoint check, no request
    assert not (pytester.path / "results").exists()


def test_incomplete_results_fail(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    # A limit above the data set is fine (lm-eval evaluates every doc); the check compares
    # with what could have been evaluated.
    cfg = config_option(
        pytester.path, {"mini_arc": offline_task("mini_arc", limit=1000, num_fewshot=0)}
    )
    run_evalchemy(pytester, server.completions_url, cfg).assert_outcomes(passed=1)
    assert (
        read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]["n_samples"][
            "mini_arc"
        ]["effective"]
        == 48
    )


def test_item_errors_when_the_server_dies_mid_run(pytester: pytest.Pytester, make_server) -> None:
    # Requests after the endpoint check's probe and one more hang until the server stops.
    srv = make_server(hang_after=2)
    cfg = config_option(
        pytester.path,
        {
            "mini_arc": offline_task("mini_arc", limit=4, timeout=3),
            "mini_mmlu": offline_task("mini_mmlu", limit=2, timeout=3),
        },
    )
    result = run_evalchemy(pytester, srv.completions_url, cfg)
    result.assert_outcomes(failed=2)
    summary = read_summary(pytester.path / "results")
    assert {v["status"] for v in summary["tasks"].values()} == {"timeout"}
    assert summary["tasks"]["mini_arc/mini_arc"]["message"].startswith("timed out after")
    assert summary["totals"]["timeout"] == 2


@pytest.mark.lower_bounds
def test_parallel_run_matches_serial(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(
        pytester.path,
        {
            "mini_arc": offline_task("mini_arc"),
            "mini_mmlu": offline_task("mini_mmlu"),
            "mini_hellaswag": offline_task("mini_hellaswag"),
        },
        benchmarks={"b": {"tasks": ["mini_arc", "mini_mmlu"]}, "c": {"tasks": ["mini_hellaswag"]}},
    )
    serial = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-run-id=serial"
    )
    serial.assert_outcomes(passed=3)
    parallel = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-run-id=par", "-n", "2"
    )
    parallel.assert_outcomes(passed=3)
    parallel.stdout.fnmatch_lines(
        ["*evalchemy scores*", "summary: *par/evalchemy_summary_par.json"]
    )

    def load(rid):
        return json.loads(
            (pytester.path / "results" / rid / f"evalchemy_summary_{rid}.json").read_text()
        )

    s, p = load("serial"), load("par")
    assert list(s["tasks"]) == list(p["tasks"])
    assert {k: v["metrics"] for k, v in s["tasks"].items()} == {
        k: v["metrics"] for k, v in p["tasks"].items()
    }
    assert p["totals"]["passed"] == 3
    merged = json.loads((pytester.path / "results" / "par" / "b_results.json").read_text())
    assert set(merged["results"]) == {"mini_arc", "mini_mmlu"}
    assert sorted(d.name for d in (pytester.path / "results").iterdir()) == [
        ".cache",
        "par",
        "serial",
    ]


def test_log_level_sets_what_the_item_log_keeps(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)})
    run_evalchemy(pytester, server.completions_url, cfg, "--evalchemy-run-id=info").assert_outcomes(
        passed=1
    )
    run_evalchemy(
        pytester,
        server.completions_url,
        cfg,
        "--evalchemy-run-id=warn",
        "--evalchemy-log-level=warning",
    ).assert_outcomes(passed=1)
    info = (pytester.path / "results" / "info" / "mini_arc_benchmark.log").read_text()
    warn = (pytester.path / "results" / "warn" / "mini_arc_benchmark.log").read_text()
    assert " INFO [lm_eval" in info
    assert " INFO [lm_eval" not in warn
    assert " WARNING [lm_eval" in warn
    result = run_evalchemy(pytester, server.completions_url, cfg, "--evalchemy-log-level=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--evalchemy-log-level: expected DEBUG, INFO, WARNING or ERROR, got 'LOUD'*"]
    )
