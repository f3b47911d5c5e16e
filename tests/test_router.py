"""Several replicas of one model behind a real ``vllm-router``: the scores of one server, every
replica used, a replica that dies mid-item costs nothing, the router stopped at the end; and
the replica check and the options' errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_evalchemy.core.endpoint import Endpoint
from pytest_evalchemy.run import router
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import CHECK_COMPLETIONS, config_option, offline_task, read_run_summary, run_metrics

pytestmark = pytest.mark.skipif(
    router.find_binary() is None, reason="vllm-router is not installed (the test extra has it)"
)

TASKS = {
    "mini_arc": offline_task("mini_arc", limit=12, batch_size=1),
    "mini_mmlu": offline_task("mini_mmlu", limit=12, batch_size=1),
}


def _run(pytester: pytest.Pytester, *args: str, plugins: tuple[object, ...] = ()) -> Any:
    return pytester.runpytest("--evalchemy-no-cache", *args, plugins=list(plugins))


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
    cfg = config_option(pytester.path, TASKS)
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
    assert run_metrics(root, "two") == run_metrics(root, "one")
    # One process, items one after the other: each item still used both replicas.
    sa, sb = a.stats(), b.stats()
    assert sa["completions"] > 0
    assert sb["completions"] > 0
    assert sa["completions"] + sb["completions"] == alone  # the same requests, none twice
    summary = read_run_summary(root, "two")
    assert summary["replicas"] == [a.completions_url, b.completions_url]
    assert summary["endpoint"] == summary["router"]
    assert all(r["endpoint"] == summary["router"] for r in summary["tasks"].values())
    assert (root / "two" / "vllm_router.log").is_file()
    assert not _listening(summary["router"])  # stopped with the run


def test_a_replica_killed_mid_item_costs_nothing(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    tasks = {"mini_arc": offline_task("mini_arc", limit=20, batch_size=1)}
    cfg = config_option(pytester.path, tasks)
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
    assert run_metrics(root, "killed") == run_metrics(root, "clean")
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
        config_option(pytester.path, TASKS),
        "--evalchemy-run-id=spread",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "evalchemy: vllm-router is not installed (pip install 'pytest-evalchemy[router]'): "
            "each xdist worker keeps to one of the 2 endpoints instead of every item using all of them"
        ]
    )
    summary = read_run_summary(pytester.path / "results", "spread")
    assert "router" not in summary
    endpoints = {r["endpoint"] for r in summary["tasks"].values()}
    assert endpoints == {a.completions_url, b.completions_url}  # items took turns


def test_a_router_the_user_runs(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], tmp_path: Path
) -> None:
    a, b = make_server(), make_server()
    theirs = router.Router([Endpoint.parse(a.url), Endpoint.parse(b.url)], tmp_path / "router.log")
    theirs.start()
    try:
        theirs.wait_ready()
        result = _run(
            pytester,
            f"--evalchemy-router={theirs.base_url}",
            config_option(pytester.path, TASKS),
            "--evalchemy-run-id=theirs",
            plugins=(_AfterCheck(a, b),),
        )
        result.assert_outcomes(passed=2)
        assert a.stats()["completions"] > 0
        assert b.stats()["completions"] > 0
        assert _listening(theirs.base_url)  # theirs: left running
    finally:
        theirs.stop()
    summary = read_run_summary(pytester.path / "results", "theirs")
    assert summary["router"] == theirs.completions_url


def test_replicas_with_different_context_lengths_are_refused_before_any_item(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    a, b = make_server(max_model_len=4096), make_server(max_model_len=2048)
    result = _run(
        pytester, f"--evalchemy-endpoint={a.url},{b.url}", config_option(pytester.path, TASKS)
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*the replicas serve 'evalchemy-test-model' with different context lengths "
            f"({a.completions_url}: 4096, {b.completions_url}: 2048); start them with the same --max-model-len*"
        ]
    )
    # The checks' requests (probe and canary) only.
    assert (a.stats()["completions"], b.stats()["completions"]) == (CHECK_COMPLETIONS,) * 2


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


@pytest.mark.parametrize("healthy", [(True, False), (False, False)], ids=["one", "both"])
def test_endpoints_without_health_are_named_before_the_router_or_any_completion(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    healthy: tuple[bool, bool],
) -> None:
    # vllm-router polls every worker's /health: a server that is not vLLM may have none. With
    # none healthy it never starts (60 s, then an error naming no cause); a worker without one
    # it quietly drops from the rotation.
    servers = [make_server(no_health=not ok) for ok in healthy]
    result = _run(
        pytester,
        f"--evalchemy-endpoint={','.join(s.url for s in servers)}",
        config_option(pytester.path, TASKS),
        "--evalchemy-run-id=nohealth",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = ", ".join(
        f"{s.url}/health answered HTTP {200 if ok else 404}"
        for s, ok in zip(servers, healthy, strict=True)
    )
    result.stderr.fnmatch_lines(
        [
            "ERROR: evalchemy endpoint check failed: vllm-router would stand in front of the 2 "
            "endpoints and uses only those that answer GET /health with 200 (without one it "
            f"does not start): {said}. Serve every endpoint with vLLM (its server has /health), "
            "or give one endpoint, or put your own load balancer in front of them and give its "
            "URL as the one --evalchemy-endpoint"
        ]
    )
    # Each server was asked /health once and nothing else: no model list, no probe.
    assert [s.stats()["requests"] for s in servers] == [{"/health": 1}] * 2
    assert [s.stats()["completions"] for s in servers] == [0, 0]
    # The router was never started: it writes its log from the start.
    assert not (pytester.path / "results" / "nohealth" / "vllm_router.log").exists()


def test_with_mixed_models_allowed_health_matters_only_when_the_router_is_needed(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    cfg = config_option(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)})
    # Two models: no router (each item keeps to one endpoint), so no /health is needed.
    a, b = make_server(no_health=True), make_server(no_health=True, model="another-model")
    mixed = _run(
        pytester,
        f"--evalchemy-endpoint={a.url},{b.url}",
        cfg,
        "--evalchemy-allow-mixed-models",
        "--evalchemy-run-id=mixed",
    )
    mixed.assert_outcomes(passed=1)
    assert "/health" not in a.stats()["requests"]
    # One model after all: the router is needed, and the endpoint without /health is named
    # before it starts (after the check's probes, which found the models the same).
    c, d = make_server(), make_server(no_health=True)
    same = _run(
        pytester,
        f"--evalchemy-endpoint={c.url},{d.url}",
        cfg,
        "--evalchemy-allow-mixed-models",
        "--evalchemy-run-id=same",
    )
    assert same.ret == pytest.ExitCode.USAGE_ERROR
    same.stderr.fnmatch_lines(
        [
            f"*: {c.url}/health answered HTTP 200, {d.url}/health answered HTTP 404. Serve every "
            "endpoint with vLLM*"
        ]
    )
    # The checks' requests (probe and canary) only.
    assert [s.stats()["completions"] for s in (c, d)] == [CHECK_COMPLETIONS] * 2
    assert not (pytester.path / "results" / "same" / "vllm_router.log").exists()
