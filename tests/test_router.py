"""Several replicas of one model behind a real ``vllm-router``: the scores of one server, every
replica used, a replica that dies mid-item costs nothing, the router stopped at the end; and
the replica check and the options' errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_evalchemy.run import router
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .conftest import offline_task, write_config

pytestmark = pytest.mark.skipif(
    router.find_binary() is None, reason="vllm-router is not installed (the test extra has it)"
)

TASKS = {
    "mini_arc": offline_task("mini_arc", limit=12, batch_size=1),
    "mini_mmlu": offline_task("mini_mmlu", limit=12, batch_size=1),
}


def _cfg(root: Path, tasks: dict[str, Any]) -> str:
    return f"--evalchemy-config={write_config(root / 'eval.json', {'tasks': tasks})}"


def _run(pytester: pytest.Pytester, *args: str, plugins: tuple[object, ...] = ()) -> Any:
    return pytester.runpytest("--evalchemy-no-cache", *args, plugins=list(plugins))


def _summary(root: Path, run_id: str) -> dict[str, Any]:
    return json.loads((root / run_id / f"evalchemy_summary_{run_id}.json").read_text())


def _metrics(root: Path, run_id: str) -> dict[str, Any]:
    return {k: v["metrics"] for k, v in _summary(root, run_id)["tasks"].items()}


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


class _AfterCheck:
    """Zero the servers' counters once the endpoint check is done, so they count the items'
    requests only; ``then`` runs then too."""

    def __init__(self, *servers: EvalchemyTestServer, then: Callable[[], None] | None = None):
        self.servers = servers
        self.then = then

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for srv in self.servers:
            srv.reset_stats()
        if self.then is not None:
            self.then()


def test_two_replicas_behind_the_router_score_as_one_server(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    a, b = make_server(latency=0.005), make_server(latency=0.005)
    cfg = _cfg(pytester.path, TASKS)
    one = _run(
        pytester,
        f"--evalchemy-endpoint={a.url}",
        cfg,
        "--evalchemy-run-id=one",
        plugins=(_AfterCheck(a),),
    )
    one.assert_outcomes(passed=2)
    alone = a.stats()["completions"]
    result = _run(
        pytester,
        f"--evalchemy-endpoint={a.url}",
        f"--evalchemy-endpoint={b.url}",
        cfg,
        "--evalchemy-run-id=two",
        plugins=(_AfterCheck(a, b),),
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*evalchemy: vllm-router on http://127.0.0.1:* in front of 2 replicas*"]
    )
    root = pytester.path / "results"
    assert _metrics(root, "two") == _metrics(root, "one")
    # One process, items one after the other: each item still used both replicas.
    sa, sb = a.stats(), b.stats()
    assert sa["completions"] > 0
    assert sb["completions"] > 0
    assert sa["completions"] + sb["completions"] == alone  # the same requests, none twice
    summary = _summary(root, "two")
    assert summary["replicas"] == [a.completions_url, b.completions_url]
    assert summary["endpoint"] == summary["router"]
    assert all(r["endpoint"] == summary["router"] for r in summary["tasks"].values())
    assert (root / "two" / "vllm_router.log").is_file()
    assert not _listening(summary["router"])  # stopped with the run


def test_a_replica_killed_mid_item_costs_nothing(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    tasks = {"mini_arc": offline_task("mini_arc", limit=20, batch_size=1)}
    cfg = _cfg(pytester.path, tasks)
    clean = make_server(latency=0.02)
    _run(
        pytester,
        f"--evalchemy-endpoint={clean.url}",
        cfg,
        "--evalchemy-run-id=clean",
        plugins=(_AfterCheck(clean),),
    ).assert_outcomes(passed=1)
    requests_of_item = clean.stats()["completions"]
    # B holds its requests after the 10th until stopped: it always dies mid-item, with requests
    # in flight, however fast the item would otherwise run.
    a, b = make_server(latency=0.02), make_server(latency=0.02, hold_after=10)
    killed = threading.Event()

    def kill_b_mid_item() -> None:
        def watch() -> None:
            def mid_item() -> bool:
                stats = b.stats()
                return stats["answered"] == 10 and stats["faults"]["held"] >= 1

            deadline = time.monotonic() + 120  # a failsafe: sb["answered"] == 10 says so
            while not mid_item() and time.monotonic() < deadline:
                time.sleep(0.005)
            b.stop()  # connections dropped, requests in flight unanswered
            killed.set()

        threading.Thread(target=watch, daemon=True).start()

    result = _run(
        pytester,
        f"--evalchemy-endpoint={a.url},{b.url}",
        cfg,
        "--evalchemy-run-id=killed",
        plugins=(_AfterCheck(a, b, then=kill_b_mid_item),),
    )
    assert killed.wait(120), "replica B was never stopped"  # a failsafe, not a measure
    result.assert_outcomes(passed=1)
    root = pytester.path / "results"
    assert _metrics(root, "killed") == _metrics(root, "clean")
    sa, sb = a.stats(), b.stats()
    assert sb["answered"] == 10
    assert sb["faults"]["held"] >= 1  # it had requests in flight when it went
    assert sa["answered"] > 0
    # Every request answered exactly once; what was asked twice is what B had in flight.
    assert sa["answered"] + sb["answered"] == requests_of_item
    asked_twice = sa["completions"] + sb["completions"] - requests_of_item
    assert asked_twice <= sb["completions"] - sb["answered"]
    assert sa["completions"] == sa["answered"]


def test_without_vllm_router_the_endpoints_are_spread_with_one_line(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_server(), make_server()
    monkeypatch.setattr(router, "find_binary", lambda: None)
    result = _run(
        pytester,
        f"--evalchemy-endpoint={a.url},{b.url}",
        _cfg(pytester.path, TASKS),
        "--evalchemy-run-id=spread",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "evalchemy: vllm-router is not installed (pip install 'pytest-evalchemy[router]'): "
            "each xdist worker keeps to one of the 2 endpoints instead of every item using all of them"
        ]
    )
    summary = _summary(pytester.path / "results", "spread")
    assert "router" not in summary
    endpoints = {r["endpoint"] for r in summary["tasks"].values()}
    assert endpoints == {a.completions_url, b.completions_url}  # items took turns


def test_a_router_the_user_runs(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], tmp_path: Path
) -> None:
    a, b = make_server(), make_server()
    theirs = router.Router([a.url, b.url], tmp_path / "router.log")
    theirs.start()
    try:
        theirs.wait_ready()
        result = _run(
            pytester,
            f"--evalchemy-router={theirs.base_url}",
            _cfg(pytester.path, TASKS),
            "--evalchemy-run-id=theirs",
            plugins=(_AfterCheck(a, b),),
        )
        result.assert_outcomes(passed=2)
        assert a.stats()["completions"] > 0
        assert b.stats()["completions"] > 0
        assert _listening(theirs.base_url)  # theirs: left running
    finally:
        theirs.stop()
    summary = _summary(pytester.path / "results", "theirs")
    assert summary["router"] == theirs.completions_url


def test_replicas_with_different_context_lengths_are_refused_before_any_item(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    a, b = make_server(max_model_len=4096), make_server(max_model_len=2048)
    result = _run(pytester, f"--evalchemy-endpoint={a.url},{b.url}", _cfg(pytester.path, TASKS))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*the replicas serve 'evalchemy-test-model' with different context lengths "
            f"({a.completions_url}: 4096, {b.completions_url}: 2048); start them with the same --max-model-len*"
        ]
    )
    assert (a.stats()["completions"], b.stats()["completions"]) == (1, 1)  # the probes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--evalchemy-replicas=2"],
            "*--evalchemy-replicas 2: replicas are vLLM servers that --evalchemy-serve MODEL starts*",
        ),
        (
            ["--evalchemy-serve=/no/model", "--evalchemy-replicas=3", "--evalchemy-gpu=0,1"],
            "*--evalchemy-gpu: 2 device(s) in '0,1' for 3 replicas; give one device per replica*",
        ),
        (
            ["--evalchemy-serve=/no/model", "--evalchemy-router=http://127.0.0.1:9"],
            "*--evalchemy-router is a router you run in front of your own replicas*give one*",
        ),
    ],
)
def test_replica_options_errors(
    pytester: pytest.Pytester, server: EvalchemyTestServer, args: list[str], expected: str
) -> None:
    before = server.stats()["requests"]
    result = pytester.runpytest(f"--evalchemy-endpoint={server.url}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert server.stats()["requests"] == before
