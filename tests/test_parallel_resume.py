"""Parallel runs, several endpoints, worker crashes, interruption and resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_evalchemy.run import router
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    CHECK_COMPLETIONS,
    config_option,
    offline_task,
    read_summary,
    start_pytest,
    wait_for_requests,
)

FOUR = {
    "mini_arc": offline_task("mini_arc", limit=4),
    "mini_hellaswag": offline_task("mini_hellaswag", limit=4),
    "mini_mmlu": offline_task("mini_mmlu", limit=4),
    "mini_gsm8k": offline_task("mini_gsm8k", limit=4),
}


def test_two_endpoints_share_the_items(pytester: pytest.Pytester, make_server) -> None:
    a, b = make_server(), make_server()
    result = pytester.runpytest(
        f"--evalchemy-endpoint={a.completions_url}",
        f"--evalchemy-endpoint={b.completions_url}",
        config_option(pytester.path, FOUR),
    )
    result.assert_outcomes(passed=4)
    summary = read_summary(pytester.path / "results")
    used = [record["endpoint"] for record in summary["tasks"].values()]
    if router.find_binary() is None:
        # Without vllm-router (and xdist) the items take turns, in run order.
        assert used == [a.completions_url, b.completions_url] * 2
    else:
        assert used == [summary["router"]] * 4  # every item through the router
    assert a.stats()["completions"] > 1
    assert b.stats()["completions"] > 1


def test_two_endpoints_comma_separated_under_xdist(pytester: pytest.Pytester, make_server) -> None:
    a, b = make_server(), make_server()
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={a.completions_url},{b.completions_url}",
        config_option(pytester.path, FOUR),
        "-n",
        "2",
    )
    result.assert_outcomes(passed=4)
    summary = read_summary(pytester.path / "results")
    if router.find_binary() is None:
        # Without vllm-router each worker keeps to one endpoint.
        assert {r["endpoint"] for r in summary["tasks"].values()} == {
            a.completions_url,
            b.completions_url,
        }
    else:
        # Every request of every item through the router, which spreads them over both.
        assert summary["replicas"] == [a.completions_url, b.completions_url]
        assert {r["endpoint"] for r in summary["tasks"].values()} == {summary["router"]}
    assert a.stats()["completions"] > 1
    assert b.stats()["completions"] > 1


def test_endpoints_serving_different_models_are_refused(
    pytester: pytest.Pytester, make_server
) -> None:
    a, b = make_server(), make_server(model="another-model")
    cfg = config_option(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)})
    args = (
        f"--evalchemy-endpoint={a.completions_url}",
        f"--evalchemy-endpoint={b.completions_url}",
        cfg,
    )
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*the endpoints serve different models*--evalchemy-allow-mixed-models*"]
    )
    pytester.runpytest(*args, "--evalchemy-allow-mixed-models").assert_outcomes(passed=1)


def test_crashed_worker_leaves_a_crashed_entry(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    pytester.makeconftest(
        "import os\n"
        "def pytest_runtest_call(item):\n"
        "    if item.name == 'mini_mmlu':\n"
        "        os._exit(3)\n"
    )
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, FOUR),
        "-n",
        "2",
    )
    result.assert_outcomes(passed=3, failed=1)
    summary = read_summary(pytester.path / "results")
    statuses = {k: v["status"] for k, v in summary["tasks"].items()}
    assert statuses == {
        "mini_arc/mini_arc": "passed",
        "mini_hellaswag/mini_hellaswag": "passed",
        "mini_mmlu/mini_mmlu": "crashed",
        "mini_gsm8k/mini_gsm8k": "passed",
    }
    assert summary["totals"]["crashed"] == 1


SLOW_TASK = {
    "mini_arc": offline_task("mini_arc", limit=12, batch_size=1, num_fewshot=0),
    "mini_mmlu": offline_task("mini_mmlu", limit=4),
}


def _clean_run_requests(tmp_path: Path, make_server) -> int:
    """Completion requests a whole run of SLOW_TASK sends (the probe excluded)."""
    server = make_server()
    root = tmp_path / "clean"
    root.mkdir()
    proc = start_pytest(
        root,
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(root, SLOW_TASK),
        "--evalchemy-no-cache",
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return server.stats()["completions"] - CHECK_COMPLETIONS


@contextlib.contextmanager
def _inherited_sigint(ignored: bool) -> Iterator[None]:
    """SIGINT ignored in this process while the run starts, as in a suite started with
    ``cmd &`` by a non-interactive shell (a CI script): the run must still stop on SIGINT."""
    if not ignored:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how", ["sigint", "sigint-ignored-by-the-suite", "sigkill"])
def test_interrupted_run_resumes_without_asking_twice(
    tmp_path: Path, make_server, how: str
) -> None:
    clean = _clean_run_requests(tmp_path, make_server)
    # The 21st completion request (the probe counted) waits until release(): the run is
    # stopped mid-item with one request in flight, however fast or slow this machine is.
    server = make_server(hold_after=20)
    cfg = config_option(tmp_path, SLOW_TASK)
    # One request at a time, so that at most one is in flight when the run stops (under the
    # default `auto`, what was in flight then is asked again: up to the settled concurrency).
    with _inherited_sigint(how == "sigint-ignored-by-the-suite"):
        proc = start_pytest(
            tmp_path,
            f"--evalchemy-endpoint={server.completions_url}",
            cfg,
            "--evalchemy-run-id=r",
            "-k",
            "mini_arc",
            "--evalchemy-concurrency=1",
        )
    wait_for_requests(server, 1, proc, key="held")
    if how.startswith("sigint"):
        os.kill(proc.pid, signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    server.release()  # the signal is sent: whether the answer still arrives decides nothing
    out, _ = proc.communicate(timeout=60)
    first = server.stats()["completions"]
    summary_path = tmp_path / "results" / "r" / "evalchemy_summary_r.json"
    summary = json.loads(summary_path.read_text())  # valid JSON whatever the interruption
    record = summary["tasks"]["mini_arc/mini_arc"]
    if how.startswith("sigint"):
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
        assert record["status"] == "interrupted"
    else:
        assert record["status"] == "running"
    server.reset_stats()
    proc = start_pytest(
        tmp_path, f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-resume=r"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    second = server.stats()["completions"]
    # Each run also sends the endpoint check's requests; at most one request was in flight
    # when the first run stopped. Everything else was asked once.
    asked = (first - CHECK_COMPLETIONS) + (second - CHECK_COMPLETIONS)
    assert clean <= asked <= clean + 1, (clean, first, second)
    summary = json.loads(summary_path.read_text())
    assert summary["tasks"]["mini_arc/mini_arc"]["status"] == "passed"
    assert summary["tasks"]["mini_arc/mini_arc"]["metrics"]["mini_arc"]["acc,none"] == 0.75
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["status"] == "passed"


def test_resume_of_a_finished_run_sends_nothing(
    tmp_path: Path, server: EvalchemyTestServer
) -> None:
    cfg = config_option(tmp_path, {"mini_mmlu": offline_task("mini_mmlu", limit=4)})
    proc = start_pytest(
        tmp_path, f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-run-id=done"
    )
    assert proc.wait(timeout=120) == 0
    before = server.stats()["completions"]
    proc = start_pytest(
        tmp_path, f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-resume=done"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # The endpoint check's requests only (its probe, its canary).
    assert server.stats()["completions"] - before == CHECK_COMPLETIONS
    summary = json.loads(
        (tmp_path / "results" / "done" / "evalchemy_summary_done.json").read_text()
    )
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["resumed"] is True


def test_resume_of_an_unknown_run_is_a_usage_error(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, FOUR),
        "--evalchemy-resume=nothing",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--evalchemy-resume nothing: no summary at *evalchemy_summary_nothing.json*"]
    )


def test_no_cache_writes_no_cache(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    cfg = config_option(pytester.path, {"mini_mmlu": offline_task("mini_mmlu", limit=2)})
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-no-cache"
    )
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "results" / ".cache").exists()
    pytester.runpytest(f"--evalchemy-endpoint={server.completions_url}", cfg).assert_outcomes(
        passed=1
    )
    assert list((pytester.path / "results" / ".cache").rglob("requests_rank0.db"))


def test_progress_is_visible(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    cfg = config_option(
        pytester.path, {"mini_mmlu": offline_task("mini_mmlu", limit=4, batch_size=1)}
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        cfg,
        "-v",
        "-o",
        "log_cli=true",
        "--log-cli-level=INFO",
        "--evalchemy-run-id=one-at-a-time",
    )
    result.assert_outcomes(passed=1)
    # 4 documents x 4 choices, one request each at batch size 1.
    result.stdout.fnmatch_lines(
        [
            "*pytest_evalchemy.progress*mini_mmlu/mini_mmlu: 1/16 requests (6%)*req/s, concurrency *",
            "PASSED (16 requests, *.*/s, concurrency *)*",
        ]
    )
    summary = pytester.path / "results" / "one-at-a-time" / "evalchemy_summary_one-at-a-time.json"
    record = json.loads(summary.read_text())["tasks"]["mini_mmlu/mini_mmlu"]
    assert record["requests"]["done"] == record["requests"]["total"] == 16
    # Concurrent requests (lm-eval's async path) count in batches: 16 requests in batches of 4.
    cfg = config_option(
        pytester.path, {"mini_mmlu": offline_task("mini_mmlu", limit=4, batch_size=4)}
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        cfg,
        "-v",
        "--evalchemy-concurrency=2",
        "--evalchemy-run-id=concurrent",
    )
    result.stdout.fnmatch_lines(["*PASSED (4 requests, *.*/s, concurrency 2)*"])


def test_one_item_times_out_the_others_pass_and_the_worker_survives(
    pytester: pytest.Pytester, make_server
) -> None:
    server = make_server(latency=0.3)
    tasks = {
        # ~48 requests of 0.3 s: far past its 3 s timeout.
        "slow": offline_task("mini_arc", limit=12, batch_size=1, num_fewshot=0, timeout=3),
        # One request each (4 choices in one batch).
        "quick1": offline_task("mini_mmlu", limit=1, batch_size=4, timeout=60),
        "quick2": offline_task("mini_hellaswag", limit=1, batch_size=4, timeout=60),
        "quick3": offline_task("mini_mmlu", limit=2, batch_size=8, timeout=60),
    }
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, tasks),
        "-n",
        "2",
        "--evalchemy-concurrency=1",  # the slow item's requests one after the other
        timeout=600,  # a failsafe against a run that never ends, not a measure
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.no_fnmatch_line("*crashed*")
    summary = read_summary(pytester.path / "results")
    slow = summary["tasks"]["slow/slow"]
    assert slow["status"] == "timeout"
    assert slow["message"].startswith("timed out after"), slow["message"]
    assert [summary["tasks"][f"quick{i}/quick{i}"]["status"] for i in (1, 2, 3)] == ["passed"] * 3
    assert summary["totals"]["timeout"] == 1
