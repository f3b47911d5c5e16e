"""Patience with servers: the endpoint check rides out what is transient, waits for a server
that is still starting, and items wait for a server that goes away and comes back.

Real runs (pytester) against the test server, whose fault switches script its first answers
of any kind (``first_answers``), start it late (``start(delay=...)``) or take it away and
bring it back on the same port (``away_after``/``away_for``). Backs rows of docs/reliability.md.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_evalchemy.run.patience import Backoff, Transient, retry_after_seconds
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    ARC2,
    SLOW_ARC,
    TWO,
    ArmFaults,
    assert_no_traceback,
    config_option,
    expected,
    offline_task,
    read_summary,
    run_evalchemy,
)


@pytest.fixture
def late_server(answer_key: list[AnswerEntry]) -> Iterator[Callable[..., EvalchemyTestServer]]:
    """A test server whose port is held at once but which listens only after ``delay``
    (``math.inf``: once told to, ``listen_now()``)."""
    started: list[EvalchemyTestServer] = []

    def make(delay: float, **switches: Any) -> EvalchemyTestServer:
        srv = EvalchemyTestServer(answer_key, **switches).start(delay=delay)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def _listen_once_waited_for(monkeypatch: pytest.MonkeyPatch, srv: EvalchemyTestServer) -> None:
    """``srv`` listens as soon as the run's terminal says the check is waiting for it: an
    event, not a delay a slow start of the run could outlast."""
    write_line = pytest.TerminalReporter.write_line

    def observed(self: pytest.TerminalReporter, line: str, **markup: bool) -> None:
        write_line(self, line, **markup)
        if line.startswith("evalchemy: waiting for "):
            srv.listen_now()

    monkeypatch.setattr(pytest.TerminalReporter, "write_line", observed)


# ---------------------------------------------------------------- the endpoint check


@pytest.mark.parametrize(
    ("kind", "switches"),
    [
        ("500", {}),
        ("503", {}),
        ("429", {"retry_after": 1}),
        ("reset", {}),
        ("truncated", {}),
        ("invalid_json", {}),
    ],
    ids=["500", "503", "429-retry-after", "reset", "truncated", "invalid-json"],
)
def test_endpoint_check_rides_out_transient_first_answers(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    kind: str,
    switches: dict[str, Any],
) -> None:
    # The first two answers of the server (the check's model list, asked twice) are faults.
    srv = make_server(first_answers=[kind, kind], **switches)
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2))
    result.assert_outcomes(passed=1)
    assert srv.stats()["scripted"] == {kind: 2}
    assert srv.stats()["requests"]["/v1/models"] == 3
    assert_no_traceback(result)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("truncated", "failed: the answer was cut off (truncated body) (ChunkedEncodingError)"),
        ("503", 'answered HTTP 503: {"error":{"message":"Simulated failure (HTTP 503, scripted)"'),
        ("invalid_json", "failed: the answer was not valid JSON (JSONDecodeError)"),
    ],
)
def test_endpoint_check_gives_up_with_one_line_and_never_an_internal_error(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], kind: str, said: str
) -> None:
    srv = make_server(first_answers=[kind] * 1000)
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy endpoint check failed: model list: {srv.url}/v1/models {said}*"
            "still after * s of retries; a server that is starting or overloaded: "
            "--evalchemy-wait-for-endpoint SECONDS waits longer"
        ]
    )
    assert srv.stats()["requests"]["/v1/models"] > 2  # asked again before giving up
    assert srv.stats()["completions"] == 0
    # The summary says so for every item, as for any failed check.
    statuses = {r["status"] for r in read_summary(pytester.path / "results")["tasks"].values()}
    assert statuses == {"error"}
    assert_no_traceback(result)


@pytest.mark.parametrize("how", ["flag", "env", "ini"])
def test_wait_for_endpoint_waits_for_a_server_that_starts_late(
    pytester: pytest.Pytester,
    late_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    # Refused until the check says it is waiting for it (however long starting the run
    # takes), then loading: 503 twice.
    srv = late_server(math.inf, first_answers=["503", "503"])
    _listen_once_waited_for(monkeypatch, srv)
    args: list[str] = []
    if how == "flag":
        args.append("--evalchemy-wait-for-endpoint=120")
    elif how == "env":
        monkeypatch.setenv("EVALCHEMY_WAIT_FOR_ENDPOINT", "120")
    else:
        pytester.makeini("[pytest]\nevalchemy_wait_for_endpoint = 120\n")
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2), *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"evalchemy: waiting for {srv.url}/v1/models: connection refused; 0 s of 120 s"]
    )
    assert srv.stats()["scripted"] == {"503": 2}
    assert_no_traceback(result)


def test_a_server_that_never_comes_up_fails_the_check_after_its_patience(
    pytester: pytest.Pytester, late_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = late_server(3600)  # holds the port, refuses every connection
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), "--evalchemy-wait-for-endpoint=2"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy endpoint check failed: cannot connect to {srv.url}/v1/models "
            "(ConnectionError: connection refused, for * s); is the vLLM server running and is "
            "the URL right? Start it, or pass --evalchemy-endpoint; a server that is still "
            "starting: --evalchemy-wait-for-endpoint SECONDS"
        ]
    )
    assert_no_traceback(result)


def test_wait_for_endpoint_zero_fails_at_the_first_transient_answer(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(first_answers=["503"])
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), "--evalchemy-wait-for-endpoint=0"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy endpoint check failed: model list: {srv.url}/v1/models answered "
            'HTTP 503: {"error":{"message":"Simulated failure (HTTP 503, scripted)"*'
        ]
    )
    assert srv.stats()["requests"] == {"/v1/models": 1}
    assert_no_traceback(result)


@pytest.mark.parametrize(
    ("args", "env", "ini", "line"),
    [
        (
            ["--evalchemy-wait-for-endpoint=-1"],
            {},
            "",
            "ERROR: --evalchemy-wait-for-endpoint: must be at least 0, got '-1'",
        ),
        (
            [],
            {"EVALCHEMY_WAIT_FOR_ENDPOINT": "soon"},
            "",
            "ERROR: --evalchemy-wait-for-endpoint (from the environment variable "
            "EVALCHEMY_WAIT_FOR_ENDPOINT): expected a number, got 'soon'",
        ),
        (
            [],
            {},
            "evalchemy_outage_timeout = nan",
            "ERROR: --evalchemy-outage-timeout (from evalchemy_outage_timeout in */tox.ini): "
            "must be at least 0, got 'nan'",
        ),
        (
            [],
            {"EVALCHEMY_OUTAGE_TIMEOUT": "-5"},
            "",
            "ERROR: --evalchemy-outage-timeout (from the environment variable "
            "EVALCHEMY_OUTAGE_TIMEOUT): must be at least 0, got '-5'",
        ),
    ],
    ids=["wait-flag-negative", "wait-env-text", "outage-ini-nan", "outage-env-negative"],
)
def test_patience_options_are_validated_before_any_request(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    line: str,
) -> None:
    srv = make_server()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, ARC2), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert srv.stats()["requests"] == {}
    assert_no_traceback(result)


# ---------------------------------------------------------------- during the items


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_server_that_goes_away_and_comes_back_is_waited_for(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    answer_key: list[AnswerEntry],
    concurrency: int,
) -> None:
    srv = make_server(latency=0.02)
    # After 6 of the item's 16 requests the server is gone for 3 s, then back on its port.
    arm = ArmFaults(srv, {"away_after": 6, "away_for": 3})
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, SLOW_ARC),
        # No retries of lm-eval's own: what rides out the outage is the outage window.
        "--evalchemy-max-retries=1",
        f"--evalchemy-concurrency={concurrency}",
        "--evalchemy-no-cache",
        plugins=(arm,),
    )
    result.assert_outcomes(passed=1)
    stats = srv.stats()
    assert stats["faults"]["away"] == 1  # it did go away
    assert stats["answered"] == 16  # every request answered once...
    assert stats["answered_twice"] == 0  # ...and none asked again once answered
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["metrics"]["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 4)
    assert_no_traceback(result)


def test_rate_limits_with_retry_after_during_items_are_waited_out(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    arm = ArmFaults(srv, {"fail_first": 3, "fail_status": 429, "retry_after": 1})
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, TWO),
        "--evalchemy-max-retries=1",
        plugins=(arm,),
    )
    result.assert_outcomes(passed=2)
    assert srv.stats()["faults"]["fail"] == 3


def test_an_outage_longer_than_the_window_errors_the_item_with_how_long(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server(latency=0.02)
    arm = ArmFaults(srv, {"away_after": 1, "away_for": 3600})  # gone for good
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, TWO),
        "--evalchemy-outage-timeout=2",
        "--evalchemy-max-retries=1",
        plugins=(arm,),
    )
    result.assert_outcomes(failed=2)
    summary = read_summary(pytester.path / "results")
    for record in summary["tasks"].values():
        assert record["status"] == "error"
        assert record["message"].startswith("the endpoint was unreachable or failing for ")
        # The first item in its requests, the next one as lm-eval builds its tokenizer.
        assert "connection refused; --evalchemy-outage-timeout 2 s): " in record["message"]
    assert summary["settings"]["outage_timeout"] == 2
    assert_no_traceback(result)


# One item per offline benchmark, and a fourth: four items that all ask the same server.
FOUR = {
    **TWO,
    "mini_hellaswag": offline_task("mini_hellaswag", limit=4),
    "mini_arc_0shot": offline_task("mini_arc", limit=4, num_fewshot=0),
}
# The server's completion requests so far, at each item's start and end: what each sent.
COUNTING_CONFTEST = """
import json, urllib.request

def _completions():
    with urllib.request.urlopen({stats!r}) as resp:
        return json.load(resp)["completions"]

STARTS = {{}}

def pytest_runtest_setup(item):
    STARTS[item.nodeid] = _completions()

def pytest_runtest_teardown(item):
    with open("sent.jsonl", "a") as out:
        out.write(json.dumps([item.name, _completions() - STARTS[item.nodeid]]) + "\\n")
"""
NOISE = ("Task exception was never retrieved", "Traceback", "Exception ignored", "Unclosed")


def test_a_server_gone_for_good_is_waited_for_once_per_process(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # Past the check's one-token completion and its canary, every completion request answers
    # HTTP 500.
    srv = make_server(fail_after=2, fail_status=500)
    pytester.makeconftest(COUNTING_CONFTEST.format(stats=f"{srv.url}/stats"))
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={srv.url}",
        config_option(pytester.path, FOUR),
        "--evalchemy-outage-timeout=3",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",  # the items in the config's order: the first one waits
    )
    result.assert_outcomes(failed=4)
    sent = [json.loads(line) for line in (pytester.path / "sent.jsonl").read_text().splitlines()]
    assert [name for name, _ in sent] == list(FOUR)
    # The first item waits out the window, asking again; each later one sends one request.
    assert sent[0][1] > 1
    assert [n for _, n in sent[1:]] == [1, 1, 1]
    records = read_summary(pytester.path / "results")["tasks"]
    assert len(records) == 4
    for record in records.values():
        assert record["status"] == "error"
        assert record["message"].startswith("the endpoint was unreachable or failing for ")
        # The server's last answer, body and all.
        assert (
            '(last: HTTP 500: {"error":{"message":"Simulated failure of completion request '
            in record["message"]
        )
        assert "; --evalchemy-outage-timeout 3 s): ClientResponseError: 500" in record["message"]
    text = result.stdout.str() + result.stderr.str()
    for noise in NOISE:
        assert noise not in text


def test_an_item_timeout_shorter_than_the_window_errors_with_the_server_answer(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # The default window (180 s) is longer than the item's timeout: the item gives up on the
    # server a margin before its timeout, and says what the server answered. The timeout
    # leaves lm-eval's set-up on a loaded machine ample time to send its first request (a
    # 10 s timeout was sometimes spent before the server's first failure came back). The
    # check's two completion requests (its probe and its canary) are answered.
    srv = make_server(fail_after=2, fail_status=500)
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), "--evalchemy-timeout=30"
    )
    result.assert_outcomes(failed=1)
    (record,) = read_summary(pytester.path / "results")["tasks"].values()
    assert record["status"] == "error"
    assert "(last: HTTP 500: {" in record["message"]
    assert (
        "the item's timeout comes before the end of --evalchemy-outage-timeout 180 s"
        in record["message"]
    )
    assert_no_traceback(result)


# ---------------------------------------------------------------- the back-off rule


def test_backoff_doubles_honours_retry_after_and_stops_at_the_deadline() -> None:
    backoff = Backoff(deadline=time.monotonic() + 3600)
    busy = Transient("HTTP 503")
    assert [backoff.delay(busy) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.delay(Transient("HTTP 429", retry_after=42.0)) == 42.0
    assert Backoff(deadline=time.monotonic() - 1).delay(busy) is None
    # Never past the deadline, whatever the server asks for.
    late = Backoff(deadline=time.monotonic() + 5).delay(Transient("HTTP 429", retry_after=600))
    assert late is not None
    assert late <= 5


class _Clock:
    """``time.monotonic`` for the outage rule, moved by the test: the rule's arithmetic
    checked without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_request_refused_while_others_are_answered_never_spends_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway capping what is in flight answers some requests and refuses the rest with
    429: the server is not away, so a request refused again and again for longer than the
    window keeps asking (slowly) instead of ending its item as ``EndpointGone``."""
    from pytest_evalchemy.run import patience

    clock = _Clock()
    monkeypatch.setattr(patience, "time", clock)
    outage = patience.Outage(window_s=5)
    busy = Transient("HTTP 429")
    backoff, waited = None, 0.0
    for _ in range(20):  # 20 refusals over far more than the 5 s window
        backoff, delay = outage.wait_after(busy, RuntimeError("429"), backoff)
        clock.now += delay
        waited += delay
        outage.answered()  # another request got through meanwhile
    assert waited > 5 * outage.window_s
    assert not outage.spent
    # Nothing answered: the same request gives up once the window is spent.
    delays: list[float] = []
    gave_up: patience.OutageGaveUp | None = None
    while gave_up is None and len(delays) < 20:
        try:
            backoff, delay = outage.wait_after(busy, RuntimeError("429"), backoff)
        except patience.OutageGaveUp as exc:
            gave_up = exc
            continue
        clock.now += delay
        delays.append(delay)
    assert "unreachable or failing for 5 s" in str(gave_up)
    assert outage.spent
    assert sum(delays) == pytest.approx(outage.window_s)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now=now) == 30.0
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
