"""Adaptive concurrency (``--evalchemy-concurrency auto``, the default): the same scores as one
request at a time, a server that refuses too many in flight, the options' errors, and the
limit's own bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_evalchemy.run.concurrency import AdaptiveLimit, Permit
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    OFFLINE_CONFIG,
    offline_task,
    read_run_summary,
    run_evalchemy,
    run_metrics,
    write_config,
)


def _run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return run_evalchemy(pytester, url, "--evalchemy-no-cache", *args)


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
    one = run_metrics(root, "one")
    assert len(one) == 4
    assert all(one.values())
    assert run_metrics(root, "auto") == one
    assert run_metrics(root, "auto1") == one
    summary = read_run_summary(root, "auto")
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
    fixed = read_run_summary(root, "one")["tasks"]
    assert all(r["requests"]["concurrency"] == 1 for r in fixed.values())
    assert all("adaptive" not in r["requests"] for r in fixed.values())


def test_auto_settles_at_the_cap_of_a_gateway_that_refuses_past_n(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    n = 4
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=20, batch_size=1),
        "mini_mmlu": offline_task("mini_mmlu", limit=20, batch_size=1),
    }
    cfg = f"--evalchemy-config={write_config(pytester.path / 'eval.json', {'tasks': tasks})}"
    clean = make_server(latency=0.01)
    _run(pytester, clean.url, cfg, "--evalchemy-run-id=clean").assert_outcomes(passed=2)
    # 429 without Retry-After past n in flight. Auto starts at 16: the first requests, sent
    # together, are refused together (12 of them while the server holds 4 for 0.1 s).
    gateway = make_server(latency=0.1, reject_over=n)
    result = _run(pytester, gateway.url, cfg, "--evalchemy-run-id=gateway", "-v")
    result.assert_outcomes(passed=2)
    assert gateway.stats()["faults"]["rejected"] > 1
    root = pytester.path / "results"
    assert run_metrics(root, "gateway") == run_metrics(root, "clean")
    records = read_run_summary(root, "gateway")["tasks"]
    adaptive = [r["requests"]["adaptive"] for r in records.values()]
    overloads = sum(a["overloads"] for a in adaptive)
    assert overloads == gateway.stats()["faults"]["rejected"]
    # A burst is one cut, not one per refusal (which took the limit to 1 and kept it there).
    assert sum(a["cuts"] for a in adaptive) < overloads
    # Every cut came at a limit above n (the server counts a request no longer than the
    # client does), so the limit stays at n: 0.8 x n after a slow round, n + 1 while it
    # tries for more.
    for record in records.values():
        assert n - 1 <= record["requests"]["concurrency"] <= n + 1, record["requests"]
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
    env = read_run_summary(root, "env")
    assert env["settings"]["concurrency"] == 3
    assert env["tasks"]["mini_mmlu/mini_mmlu"]["settings"]["num_concurrent"] == 3
    capped = read_run_summary(root, "max")["tasks"]["mini_mmlu/mini_mmlu"]
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


def test_one_burst_of_refusals_is_one_cut_and_caps_the_limit_below_the_one_refused() -> None:
    async def scenario() -> dict[str, Any]:
        limit = AdaptiveLimit(maximum=256, initial=16)
        tickets = [await limit.acquire(1) for _ in range(16)]
        # A gateway that takes 4: the other 12, sent together, come back refused.
        crowded = [limit.overloaded(t) for t in tickets[4:]]
        after_burst = (limit.cuts, limit.limit, limit.ceiling)
        # A request sent after the cut and refused too is news: the limit is still too high.
        later = await limit.acquire(1)
        limit.overloaded(later)
        after_later = (limit.cuts, limit.limit, limit.ceiling)
        alone_limit = AdaptiveLimit(maximum=64, initial=10)
        alone = alone_limit.overloaded(await alone_limit.acquire(1))
        batch = alone_limit.overloaded(await alone_limit.acquire(8))  # 8 prompts, by itself
        return {
            "crowded": crowded,
            "burst": after_burst,
            "later": after_later,
            "overloads": limit.overloads,
            "alone": (alone, batch, alone_limit.ceiling),
        }

    seen = asyncio.run(scenario())
    # Each waits for a place again, without using one of lm-eval's attempts.
    assert seen["crowded"] == [True] * 12
    # One event, one cut: 0.8 x 16, the cap below the 16 it was sent under.
    assert seen["burst"] == (1, 12, 15)
    assert seen["later"] == (2, 9, 11)
    assert seen["overloads"] == 13
    # With nothing else in flight it is the server's own refusal (lm-eval's retries handle
    # it), and says nothing about how many it takes.
    assert seen["alone"] == (False, False, 64)


@dataclass
class Simulated:
    """What ``_simulate`` saw: the limit (its counters and history), the simulated time it
    took, and how many requests the server refused."""

    limit: AdaptiveLimit
    elapsed: float
    refused: int = 0
    limits: list[int] = field(default_factory=list)  # the limit after every outcome, in order


def _simulate(
    n: int,
    *,
    slots: int | None = None,
    cap: int | None = None,
    latency: float = 0.05,
    turnaround: float = 0.002,
    cpu: float = 0.0,
    stalls: tuple[float, float] = (0.0, 0.0),
    timeouts: Collection[int] = (),
    seed: int = 0,
) -> Simulated:
    """``n`` one-prompt requests through an ``AdaptiveLimit`` on a simulated clock.

    The server serves each request for ``latency`` +-20% (uniform, seeded: a real server's
    answers are not in lockstep), ``slots`` at a time (the rest wait their turn; None: any
    number). A gateway of ``cap`` answers 429 at once to a request arriving while ``cap`` are
    being served. The client hears of an answer ``turnaround`` after it left the server, and
    reads answers one at a time, each taking ``cpu`` +-50% of its event loop (a client short
    of CPU), now and then (probability ``stalls[0]`` per answer) ``stalls[1]`` more (another
    process took the core). The requests numbered in ``timeouts`` (1-based, in the order
    sent) time out at the client. A refused or timed-out request is asked again, as the
    completions model does."""
    import heapq
    import random
    from collections import deque

    rng = random.Random(seed)
    now = [0.0]
    limit = AdaptiveLimit(clock=lambda: now[0])
    events: list[tuple[float, int, str, Any]] = []
    queue: deque[Any] = deque()
    busy = [0]
    left = [n]
    sent = [0]
    order = [0]
    client_free = [0.0]
    numbers: dict[int, int] = {}
    result = Simulated(limit, 0.0)

    def at(when: float, kind: str, ticket: Any) -> None:
        order[0] += 1
        heapq.heappush(events, (when, order[0], kind, ticket))

    def serve(ticket: Any) -> None:
        busy[0] += 1
        at(now[0] + latency * rng.uniform(0.8, 1.2), "answered", ticket)

    def heard(ticket: Any, kind: str) -> None:
        # The event loop reads one answer at a time: a busy client hears of answers late.
        start = max(now[0] + turnaround, client_free[0])
        took = cpu * rng.uniform(0.5, 1.5)
        if stalls[0] and rng.random() < stalls[0]:
            took += stalls[1]
        client_free[0] = start + took
        at(start + took, kind, ticket)

    def send() -> None:
        # What acquire() does for each waiting request, one event loop turn at a time.
        while left[0] and limit._fits(1):
            left[0] -= 1
            sent[0] += 1
            ticket = limit._admit(1)
            numbers[id(ticket)] = sent[0]
            at(now[0] + turnaround / 2 * rng.uniform(0.5, 1.5), "arrived", ticket)

    send()
    while events:
        now[0], _, kind, ticket = heapq.heappop(events)
        if kind == "arrived":
            if cap is not None and busy[0] >= cap:
                result.refused += 1
                heard(ticket, "refused")
            elif slots is None or busy[0] < slots:
                serve(ticket)
            else:
                queue.append(ticket)
            continue
        if kind == "answered":
            busy[0] -= 1
            if queue:
                serve(queue.popleft())
            heard(ticket, "timeout" if numbers[id(ticket)] in timeouts else "read")
            continue
        ticket.end = now[0]
        if kind == "read":
            limit.succeeded(ticket)
        else:
            (limit.overloaded if kind == "refused" else limit.timed_out)(ticket)
            left[0] += 1  # asked again: requeued, or lm-eval's retry
        result.limits.append(limit.limit)
        send()
    result.elapsed = now[0]
    return result


@pytest.mark.parametrize(("slots", "low", "high"), [(1, 2, 2), (4, 4, 7), (16, 16, 24)])
def test_the_limit_settles_a_little_above_the_servers_slots(
    slots: int, low: int, high: int
) -> None:
    n = 200 * slots
    run = _simulate(n, slots=slots, seed=slots)
    # At least the slots, and not far above them: more would only queue on the server.
    assert low <= run.limit.limit <= high
    ideal = n * 0.05 / slots
    assert ideal / run.elapsed >= 0.95


@pytest.mark.parametrize("cap", [1, 4, 10, 30])
def test_against_a_gateway_that_refuses_past_n_the_limit_settles_at_n(cap: int) -> None:
    n = 100 * cap
    run = _simulate(n, cap=cap, seed=cap)
    # It starts above (or, at 30, probes past) the cap: the gateway must refuse some.
    assert run.refused > 0
    # A burst answers requests in flight together: far fewer cuts than refusals, each at a
    # limit above the cap, so the limit never falls below 0.8 x (cap + 1)...
    assert run.limit.cuts < run.refused
    first_cut = next(i for i in range(1, len(run.limits)) if run.limits[i] < run.limits[i - 1])
    assert min(run.limits[first_cut:]) >= max(1, int(0.8 * (cap + 1)))
    # ...and climbs back to the cap, no higher (one refusal now and then tries for more).
    assert run.limit.limit == cap
    assert run.limit.ceiling == cap
    # As fast as the best fixed setting (the cap) to within 1.3x.
    ideal = n * 0.05 / cap
    assert ideal / run.elapsed >= 1 / 1.3


@pytest.mark.parametrize(("slots", "cap", "before"), [(None, 4, 4), (16, None, 16)])
def test_after_a_cut_the_limit_climbs_back(slots: int | None, cap: int | None, before: int) -> None:
    n = 400 * before
    run = _simulate(n, slots=slots, cap=cap, timeouts={n // 2}, seed=1)
    assert run.limit.timeouts == 1
    # The timeout halved the limit, the additive increase took it back.
    index = next(i for i, value in enumerate(run.limits) if i > n // 4 and value < before)
    assert run.limits[index] <= before // 2 + 1
    assert min(run.limits[index:]) == run.limits[index]
    assert run.limit.limit >= before
    ideal = n * 0.05 / before
    assert ideal / run.elapsed >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cpu", [0.004, 0.005, 0.006])
def test_a_client_short_of_cpu_never_settles_below_the_knee(cpu: float, seed: int) -> None:
    # 16 slots, but each answer costs the client 2-9 ms and now and then another process
    # takes the core for 30 ms: the client answers late, so fewer in flight look as good
    # (Little's law at the client's rate says 12) while they would leave slots idle.
    n = 1600
    run = _simulate(n, slots=16, cpu=cpu, stalls=(0.01, 0.03), seed=seed)
    settled = [after for size, _, _, after in run.limit.history]
    assert min(settled) >= 16
    assert run.limit.limit >= 16
    floor = max(n * 0.05 / 16, n * cpu)  # the server's ideal, or the client's own work
    assert floor / run.elapsed >= 0.85
