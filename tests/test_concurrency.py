"""Adaptive concurrency (``--evalchemy-concurrency auto``, the default): the same scores as one
request at a time, a server that refuses too many in flight, the options' errors, and the
limit's own bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.concurrency import AdaptiveLimit, Permit
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .conftest import OFFLINE_CONFIG, offline_task, write_config


def _run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(f"--evalchemy-endpoint={url}", "--evalchemy-no-cache", *args)


def _summary(root: Path, run_id: str) -> dict[str, Any]:
    return json.loads((root / run_id / f"evalchemy_summary_{run_id}.json").read_text())


def _metrics(root: Path, run_id: str) -> dict[str, Any]:
    return {k: v["metrics"] for k, v in _summary(root, run_id)["tasks"].items()}


def test_auto_scores_equal_one_at_a_time_on_every_offline_benchmark(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # A server that serves 4 at once, so auto really has requests waiting side by side.
    srv = make_server(latency=0.01, max_concurrency=4)
    cfg = f"--evalchemy-config={OFFLINE_CONFIG}"
    _run(
        pytester, srv.url, cfg, "--evalchemy-concurrency=1", "--evalchemy-run-id=one"
    ).assert_outcomes(passed=4)
    assert srv.stats()["max_concurrent"] == 1
    srv.reset_stats()
    # The default is auto; the config's batch size 4 (lm-eval's batched path) and batch size 1
    # (the plugin's streaming path) both.
    _run(pytester, srv.url, cfg, "--evalchemy-run-id=auto").assert_outcomes(passed=4)
    assert srv.stats()["max_concurrent"] > 1
    _run(
        pytester, srv.url, cfg, "--evalchemy-batch-size=1", "--evalchemy-run-id=auto1"
    ).assert_outcomes(passed=4)
    root = pytester.path / "results"
    one = _metrics(root, "one")
    assert len(one) == 4
    assert all(one.values())
    assert _metrics(root, "auto") == one
    assert _metrics(root, "auto1") == one
    summary = _summary(root, "auto")
    assert summary["settings"]["concurrency"] == "auto"
    for record in summary["tasks"].values():
        assert record["settings"]["num_concurrent"] == "auto"
        assert record["settings"]["max_concurrency"] == 256
        assert 1 <= record["requests"]["concurrency"] <= 256
        assert record["requests"]["per_s"] > 0
        assert record["requests"]["adaptive"]["peak_in_flight"] >= 1
        # lm-eval's equivalent command: at the concurrency the item settled at, not 256 at once.
        settled = record["requests"]["concurrency"]
        assert f"num_concurrent={settled} " in record["lm_eval_command"]
    fixed = _summary(root, "one")["tasks"]
    assert all(r["requests"]["concurrency"] == 1 for r in fixed.values())
    assert all("adaptive" not in r["requests"] for r in fixed.values())


def test_auto_settles_at_most_n_on_a_server_that_refuses_more_than_n(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    n = 3
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=20, batch_size=1),
        "mini_mmlu": offline_task("mini_mmlu", limit=20, batch_size=1),
    }
    cfg = f"--evalchemy-config={write_config(pytester.path / 'eval.json', {'tasks': tasks})}"
    clean = make_server(latency=0.01)
    _run(pytester, clean.url, cfg, "--evalchemy-run-id=clean").assert_outcomes(passed=2)
    # Auto starts above n: the server must refuse some, and the run must still pass.
    strict = make_server(latency=0.01, reject_over=n)
    result = _run(pytester, strict.url, cfg, "--evalchemy-run-id=strict", "-v")
    result.assert_outcomes(passed=2)
    stats = strict.stats()
    assert stats["faults"]["rejected"] > 0
    assert stats["max_admitted"] <= n
    root = pytester.path / "results"
    assert _metrics(root, "strict") == _metrics(root, "clean")
    records = _summary(root, "strict")["tasks"]
    for record in records.values():
        assert 1 <= record["requests"]["concurrency"] <= n, record["requests"]
    assert sum(r["requests"]["adaptive"]["overloads"] for r in records.values()) > 0
    settled = records["mini_mmlu/mini_mmlu"]["requests"]["concurrency"]
    result.stdout.fnmatch_lines([f"*mini_mmlu*PASSED (*requests, *.*/s, concurrency {settled})*"])


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (
            "flag",
            "*--evalchemy-concurrency: expected auto or a whole number of at least 1, got 'lots'*",
        ),
        (
            "env",
            "*--evalchemy-concurrency (from the environment variable EVALCHEMY_CONCURRENCY): expected auto or a whole number of at least 1, got '0'*",
        ),
        (
            "ini",
            "*--evalchemy-concurrency (from evalchemy_concurrency in *tox.ini): expected auto*got '-2'*",
        ),
    ],
)
def test_a_bad_concurrency_says_where_before_any_request(
    pytester: pytest.Pytester,
    server: EvalchemyTestServer,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    expected: str,
) -> None:
    args: list[str] = []
    if where == "flag":
        args.append("--evalchemy-concurrency=lots")
    elif where == "env":
        monkeypatch.setenv("EVALCHEMY_CONCURRENCY", "0")
    else:
        pytester.makeini("[pytest]\nevalchemy_concurrency = -2\n")
    before = server.stats()["requests"]
    result = pytester.runpytest(f"--evalchemy-endpoint={server.completions_url}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert server.stats()["requests"] == before  # nothing sent, not even the endpoint check


def test_concurrency_from_the_environment_and_a_max_concurrency(
    pytester: pytest.Pytester, server: EvalchemyTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = {"mini_mmlu": offline_task("mini_mmlu", limit=4, batch_size=1)}
    cfg = f"--evalchemy-config={write_config(pytester.path / 'eval.json', {'tasks': tasks})}"
    monkeypatch.setenv("EVALCHEMY_CONCURRENCY", "3")
    _run(pytester, server.url, cfg, "--evalchemy-run-id=env").assert_outcomes(passed=1)
    monkeypatch.delenv("EVALCHEMY_CONCURRENCY")
    _run(
        pytester, server.url, cfg, "--evalchemy-max-concurrency=2", "--evalchemy-run-id=max"
    ).assert_outcomes(passed=1)
    root = pytester.path / "results"
    env = _summary(root, "env")
    assert env["settings"]["concurrency"] == 3
    assert env["tasks"]["mini_mmlu/mini_mmlu"]["settings"]["num_concurrent"] == 3
    capped = _summary(root, "max")["tasks"]["mini_mmlu/mini_mmlu"]
    assert capped["settings"]["max_concurrency"] == 2
    assert capped["requests"]["adaptive"]["peak_in_flight"] <= 2
    assert capped["requests"]["concurrency"] <= 2


# ---------------------------------------------------------------- the limit itself


async def _turns() -> None:
    """Let the event loop run what is ready (a hand-over takes a callback, then the task)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_limit_counts_prompts_and_lets_a_big_request_through_alone() -> None:
    async def scenario() -> list[bool]:
        limit = AdaptiveLimit(maximum=8, initial=4)
        first = await limit.acquire(2)  # two requests of 2 prompts fill a limit of 4
        second = await limit.acquire(2)
        third = asyncio.create_task(limit.acquire(1))
        await _turns()
        waited = not third.done()
        limit.succeeded(first)
        await _turns()
        admitted = third.done()
        # More prompts than the limit: it goes alone, once nothing else is in flight.
        big = asyncio.create_task(limit.acquire(6))
        await _turns()
        big_waited = not big.done()
        limit.abandon(second)
        limit.abandon(third.result())
        await _turns()
        return [waited, admitted, big_waited, big.done(), limit.peak_in_flight == 6]

    assert asyncio.run(scenario()) == [True, True, True, True, True]


def test_a_permit_is_what_lm_evals_amodel_call_takes_as_its_semaphore() -> None:
    async def scenario() -> tuple[bool, int, int]:
        limit = AdaptiveLimit(maximum=8, initial=4)
        permit = Permit(limit, 3)
        acquired = await permit.acquire()  # lm-eval: `acquired = await sem.acquire()`
        in_flight = limit.snapshot()["in_flight"]
        permit.release()  # lm-eval's `finally: sem.release()`: stops the clock only
        permit.succeeded()  # the outcome frees the place
        return acquired, in_flight, limit.snapshot()["in_flight"]

    assert asyncio.run(scenario()) == (True, 3, 0)


def test_an_overload_with_others_in_flight_cuts_and_caps_the_limit() -> None:
    async def scenario() -> tuple[bool, bool, int, int]:
        limit = AdaptiveLimit(maximum=64, initial=10)
        tickets = [await limit.acquire(1) for _ in range(6)]
        crowded = limit.overloaded(tickets[5])  # refused as the 6th in flight
        alone_limit = AdaptiveLimit(maximum=64, initial=10)
        only = await alone_limit.acquire(1)
        alone = alone_limit.overloaded(only)  # refused with nothing else in flight
        return crowded, alone, limit.limit, limit.ceiling

    crowded, alone, value, ceiling = asyncio.run(scenario())
    assert crowded is True  # wait for a place again, without using one of lm-eval's attempts
    assert alone is False  # the server's own refusal: lm-eval's retries handle it
    assert ceiling == 5
    assert value == 5  # min(0.8 x 10, the ceiling)


def _simulate(
    slots: int, n: int, latency: float = 0.05, turnaround: float = 0.002
) -> tuple[int, float]:
    """``n`` one-prompt requests through an ``AdaptiveLimit`` on a simulated clock: a server of
    ``slots`` that serves each request for ``latency`` +-20% (uniform, seeded: a real server's
    answers are not in lockstep; the rest wait their turn), and a client
    that needs ``turnaround`` after an answer before the limit hears of it. Returns the limit
    it ended at and the elapsed time."""
    import heapq
    import random
    from collections import deque

    rng = random.Random(slots)
    now = [0.0]
    limit = AdaptiveLimit(clock=lambda: now[0])
    events: list[tuple[float, int, str, Any]] = []
    waiting: deque[Any] = deque()
    busy = [0]
    left = [n]
    order = [0]

    def at(when: float, kind: str, ticket: Any) -> None:
        order[0] += 1
        heapq.heappush(events, (when, order[0], kind, ticket))

    def serve(ticket: Any) -> None:
        busy[0] += 1
        at(now[0] + latency * rng.uniform(0.8, 1.2), "answered", ticket)

    def send() -> None:
        # What acquire() does for each waiting request, one event loop turn at a time.
        while left[0] and limit._fits(1):
            left[0] -= 1
            ticket = limit._admit(1)
            if busy[0] < slots:
                serve(ticket)
            else:
                waiting.append(ticket)

    send()
    while events:
        now[0], _, kind, ticket = heapq.heappop(events)
        if kind == "answered":
            ticket.end = now[0]
            busy[0] -= 1
            if waiting:
                serve(waiting.popleft())
            at(now[0] + turnaround, "read", ticket)
        else:
            limit.succeeded(ticket)
            send()
    return limit.limit, now[0]


@pytest.mark.parametrize(("slots", "low", "high"), [(1, 2, 2), (4, 4, 7), (16, 16, 24)])
def test_the_limit_settles_a_little_above_the_servers_slots(
    slots: int, low: int, high: int
) -> None:
    n = 200 * slots
    settled, elapsed = _simulate(slots, n)
    # At least the slots, and not far above them: more would only queue on the server.
    assert low <= settled <= high
    ideal = n * 0.05 / slots
    assert ideal / elapsed >= 0.95
