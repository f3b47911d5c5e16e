"""Reliability and security: what real endpoints do to a run, each fault tried for real.

Every test here backs a row of ``docs/reliability.md``. The faults come from the test server's
switches (``pytest_evalchemy/testing/server.py``); switches that must not hit the endpoint
check's probe are armed once the check is done (``ArmFaults``). Rows already tested elsewhere
(endpoint down, chat-only, null logprobs, no tokenizer, SIGINT/SIGKILL + resume, unsafe run
ids, bad configs) are listed in the doc with their tests, not repeated here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.testing import server as server_module
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    ARC2,
    CHECK_COMPLETIONS,
    REPO,
    SLOW_ARC,
    TWO,
    ArmFaults,
    assert_no_traceback,
    assert_nowhere,
    config_option,
    expected,
    offline_task,
    read_summary,
    run_evalchemy,
    run_metrics,
    start_pytest,
    statuses_so_far,
    wait_for,
)

# The faults of the tests that pin this hit requests in the order sent: one at a time, as a
# sequence of attempts of the same request (under the default `auto` they spread over the
# requests in flight, and a 503 among others in flight is waited out, not an attempt).
ONE_AT_A_TIME = "--evalchemy-concurrency=1"


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key or CA bundle of the environment running the tests would change what is sent.
    for name in ("EVALCHEMY_API_KEY", "OPENAI_API_KEY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- wrong URL


@pytest.mark.parametrize("path", ["/v2/completions", "/completions"])
def test_wrong_url_path_says_what_was_expected_and_what_was_answered(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], path: str
) -> None:
    srv = make_server()
    result = run_evalchemy(pytester, f"{srv.url}{path}", config_option(pytester.path, ARC2))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    models = srv.url + path.replace("/completions", "/models")
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy endpoint check failed: model list: {models} answered HTTP 404: "
            '{"detail":"Not Found"}; expected a vLLM OpenAI-compatible server (the endpoint '
            "ends in /v1/completions)"
        ]
    )
    assert srv.stats()["completions"] == 0
    assert_no_traceback(result)


def test_server_root_without_v1_is_completed(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, ARC2))
    result.assert_outcomes(passed=1)
    assert read_summary(pytester.path / "results")["endpoint"] == server.completions_url


# ---------------------------------------------------------------- overload and bursts


@pytest.mark.parametrize(
    ("switches", "concurrency"),
    [
        ({"fail_first": 2, "fail_status": 429, "retry_after": 1}, 1),
        ({"fail_first": 2, "fail_status": 503, "retry_after": 1}, 1),
        ({"fail_first": 2, "fail_status": 500}, 1),
        # lm-eval's other client (aiohttp), with requests in flight side by side
        ({"fail_first": 2, "fail_status": 503, "retry_after": 1}, 2),
    ],
    ids=["429-retry-after", "503-retry-after", "500-burst", "503-concurrent"],
)
def test_overload_is_retried_and_scores_equal_a_clean_run(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    switches: dict[str, Any],
    concurrency: int,
) -> None:
    srv = make_server()
    cfg = config_option(pytester.path, TWO)
    args = (cfg, "--evalchemy-no-cache", f"--evalchemy-concurrency={concurrency}")
    run_evalchemy(pytester, srv.url, *args, "--evalchemy-run-id=clean")
    result = run_evalchemy(
        pytester, srv.url, *args, "--evalchemy-run-id=faulty", plugins=(ArmFaults(srv, switches),)
    )
    result.assert_outcomes(passed=2)
    assert srv.stats()["faults"]["fail"] == 2  # the failures did happen, and were retried
    results = pytester.path / "results"
    assert run_metrics(results, "faulty") == run_metrics(results, "clean")


def test_max_retries_is_configurable_and_exhausted_retries_error_one_item(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    cfg = config_option(pytester.path, TWO)
    fail3 = {"fail_first": 3, "fail_status": 503}
    # lm-eval's attempts alone (no outage window; the window has its own tests).
    cfg = f"{cfg} --evalchemy-outage-timeout=0".split(" ")
    # Three failures in a row: four attempts get through...
    result = run_evalchemy(
        pytester,
        srv.url,
        *cfg,
        "--evalchemy-max-retries=4",
        "--evalchemy-run-id=four",
        ONE_AT_A_TIME,
        plugins=(ArmFaults(srv, fail3),),
    )
    result.assert_outcomes(passed=2)
    # ...the default three do not: that item errors with the cause, the next one runs.
    result = run_evalchemy(
        pytester,
        srv.url,
        *cfg,
        "--evalchemy-run-id=three",
        ONE_AT_A_TIME,
        plugins=(ArmFaults(srv, fail3),),
    )
    result.assert_outcomes(passed=1, failed=1)
    summary = json.loads(
        (pytester.path / "results" / "three" / "evalchemy_summary_three.json").read_text()
    )
    arc = summary["tasks"]["mini_arc/mini_arc"]
    assert arc["status"] == "error"
    assert arc["message"].startswith("the endpoint answered HTTP 503, 3 attempt(s) per request")
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["status"] == "passed"
    assert summary["settings"]["max_retries"] == 3
    assert_no_traceback(result)


# ---------------------------------------------------------------- broken answers


@pytest.fixture
def mid_body_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion answers break off mid-body (the headers and half the JSON, then a TCP
    reset) while the server's ``mid_body_first`` (set through ``ArmFaults``) is above zero."""
    send = server_module._Handler._send
    lock = threading.Lock()

    def breaking(self: Any, status: int, body: bytes, headers: Any = ()) -> None:
        app = self.server.app
        with lock:
            cut = status == 200 and self.path == "/v1/completions"
            cut = cut and getattr(app, "mid_body_first", 0) > 0
            if cut:
                app.mid_body_first -= 1
        if not cut:
            send(self, status, body, headers)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self._drop_connection()

    monkeypatch.setattr(server_module._Handler, "_send", breaking)


def test_resets_and_truncated_json_are_retried(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    answer_key: list[AnswerEntry],
    mid_body_resets: None,
) -> None:
    srv = make_server()
    switches = {"reset_first": 1, "invalid_json_first": 1, "mid_body_first": 1}
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), plugins=(ArmFaults(srv, switches),)
    )
    result.assert_outcomes(passed=1)
    assert srv.stats()["faults"] == {
        "reset": 1,
        "fail": 0,
        "invalid_json": 1,
        "hang": 0,
        "rejected": 0,
        "held": 0,
    }
    assert srv.mid_body_first == 0  # type: ignore[attr-defined]
    metrics = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]["metrics"]
    assert metrics["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 4)


@pytest.mark.parametrize(
    ("switches", "cause"),
    [
        (
            {"reset_first": 3},
            "the connection to the endpoint failed (server down, restarting or resetting), "
            "3 attempt(s) per request: ConnectionError: ",
        ),
        (
            {"mid_body_first": 3},
            "the connection to the endpoint failed (server down, restarting or resetting), "
            "3 attempt(s) per request: ChunkedEncodingError: ",
        ),
        (
            {"invalid_json_first": 3},
            "the endpoint's answer was not valid JSON (a truncated or garbled body), "
            "3 attempt(s) per request: JSONDecodeError: ",
        ),
    ],
    ids=["reset", "reset-mid-body", "invalid-json"],
)
def test_persistent_garbage_errors_the_item_with_its_cause_and_the_others_go_on(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    mid_body_resets: None,
    switches: dict[str, Any],
    cause: str,
) -> None:
    srv = make_server()
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, TWO),
        "--evalchemy-outage-timeout=0",  # lm-eval's attempts alone
        ONE_AT_A_TIME,
        plugins=(ArmFaults(srv, switches),),
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*mini_arc/mini_arc: lm-eval failed: {cause}*"])
    summary = read_summary(pytester.path / "results")
    assert summary["tasks"]["mini_arc/mini_arc"]["message"].startswith(cause)
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["status"] == "passed"
    assert_no_traceback(result)


def test_a_hanging_request_times_out_its_item_and_the_others_go_on(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=4, priority="high", timeout=3),
        "mini_mmlu": offline_task("mini_mmlu", limit=4, timeout=30),
    }
    arm = ArmFaults(
        srv, per_item={"mini_arc": {"hang_after": 0}, "mini_mmlu": {"hang_after": None}}
    )
    result = run_evalchemy(pytester, srv.url, config_option(pytester.path, tasks), plugins=(arm,))
    result.assert_outcomes(passed=1, failed=1)
    summary = read_summary(pytester.path / "results")
    arc = summary["tasks"]["mini_arc/mini_arc"]
    assert arc["status"] == "timeout"
    assert arc["message"].startswith("timed out after"), arc["message"]
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["status"] == "passed"


# ---------------------------------------------------------------- server restarts


class _StopAfter(threading.Thread):
    """Stop ``srv`` once it has received ``completions`` completion requests, then call
    ``then``; runs beside the pytester run (the server lives in this process). ``finish()``
    fails, saying so, when the run never got that far (the deadline is only a failsafe)."""

    def __init__(self, srv: EvalchemyTestServer, completions: int, then: Callable[[], None]):
        super().__init__(daemon=True)
        self.srv, self.completions, self.then = srv, completions, then
        self.reached = False
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not (reached := self.srv.stats()["completions"] >= self.completions):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.reached = reached
        self.srv.stop()  # stopped either way, so the run does not wait on it
        self.then()

    def finish(self) -> None:
        self.join(120)
        assert not self.is_alive(), "the server was never stopped"
        assert self.reached, f"the run never sent {self.completions} completion requests"


def test_server_restart_mid_run_is_survived_by_retries(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    answer_key: list[AnswerEntry],
) -> None:
    first = make_server(latency=0.02)
    second: list[EvalchemyTestServer] = []

    def restart() -> None:
        # Down for a moment. Its length decides nothing: the default outage window (180 s)
        # waits for the server whatever lm-eval's own attempts make of it.
        time.sleep(0.3)
        second.append(EvalchemyTestServer(answer_key, port=first.port).start())

    watcher = _StopAfter(first, 6, restart)
    try:
        # One at a time: requests are still to be sent when the first server goes away.
        result = run_evalchemy(
            pytester, first.url, config_option(pytester.path, SLOW_ARC), ONE_AT_A_TIME
        )
    finally:
        watcher.finish()
        for srv in second:
            srv.stop()
    result.assert_outcomes(passed=1)
    assert second[0].stats()["completions"] >= 1  # the rest went to the new server
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["metrics"]["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 4)


def test_long_outage_errors_the_item_and_resume_keeps_the_cached_answers(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    answer_key: list[AnswerEntry],
) -> None:
    cfg = config_option(pytester.path, SLOW_ARC)
    first = make_server(latency=0.02)
    # The check's requests and 6 answers, then gone.
    watcher = _StopAfter(first, CHECK_COMPLETIONS + 6, lambda: None)
    # No outage window: the item errors as soon as lm-eval's attempts are used up.
    result = run_evalchemy(
        pytester,
        first.url,
        cfg,
        "--evalchemy-run-id=out",
        "--evalchemy-outage-timeout=0",
        ONE_AT_A_TIME,
    )
    watcher.finish()
    result.assert_outcomes(failed=1)
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["status"] == "error"
    assert record["message"].startswith("the connection to the endpoint failed")
    # The server is back on the same address: the resumed run asks only what is missing.
    second = make_server(port=first.port)
    run_evalchemy(pytester, second.url, cfg, "--evalchemy-resume=out").assert_outcomes(passed=1)
    asked_before = first.stats()["completions"] - CHECK_COMPLETIONS  # the check excluded
    asked_after = second.stats()["completions"] - CHECK_COMPLETIONS
    # 16 requests in all; the one in flight when the server went away was asked twice.
    assert 16 <= asked_before + asked_after <= 17, (asked_before, asked_after)
    assert asked_after < 16
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["status"] == "passed"
    assert record["metrics"]["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 4)


# ---------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize(
    ("workers", "kill"),
    [
        (0, os.kill),  # `kill PID`
        (2, os.killpg),  # the whole process group (controller and workers), as CI runners do
    ],
    ids=["serial-kill-pid", "xdist-kill-group"],
)
def test_sigterm_ends_the_run_as_interrupted_with_the_summary_written(
    tmp_path: Path,
    make_server: Callable[..., EvalchemyTestServer],
    workers: int,
    kill: Callable[[int, int], None],
) -> None:
    srv = make_server(latency=0.05)
    tasks = {
        "mini_mmlu": offline_task("mini_mmlu", limit=2, priority="high"),
        "mini_arc": offline_task("mini_arc", limit=12, batch_size=1, num_fewshot=0),
    }
    xdist = ["-n", str(workers), "--dist", "loadgroup"] if workers else []
    proc = start_pytest(
        tmp_path,
        f"--evalchemy-endpoint={srv.url}",
        config_option(tmp_path, tasks),
        "--evalchemy-run-id=t",
        ONE_AT_A_TIME,  # slow enough to be caught mid-item
        *xdist,
    )
    summary = tmp_path / "results" / "t" / "evalchemy_summary_t.json"
    try:
        # Wait for one finished item and the other one busy.
        wait_for(
            lambda: (
                statuses_so_far(tmp_path / "results", "t").get("mini_mmlu/mini_mmlu") == "passed"
                and statuses_so_far(tmp_path / "results", "t").get("mini_arc/mini_arc") == "running"
                and srv.stats()["completions"] > 20
            ),
            proc,
        )
        kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # no worker left behind, whatever happened
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt: SIGTERM received" in out
    data = json.loads(summary.read_text())  # valid JSON
    assert {k: v["status"] for k, v in data["tasks"].items()} == {
        "mini_mmlu/mini_mmlu": "passed",
        "mini_arc/mini_arc": "interrupted",
    }
    assert data["exit_status"] == 2
    assert data["totals"]["interrupted"] == 1
    assert data["tasks"]["mini_mmlu/mini_mmlu"]["metrics"]["mini_mmlu"]["acc,none"] == 1.0


def test_sigterm_handler_is_set_only_while_the_plugin_runs(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    seen: list[Any] = []

    class Probe:
        def pytest_sessionstart(self) -> None:
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    run_evalchemy(
        pytester, server.url, config_option(pytester.path, ARC2), plugins=(Probe(),)
    ).assert_outcomes(passed=1)
    assert seen[0] is not before  # ours, during the run
    assert signal.getsignal(signal.SIGTERM) is before  # restored at unconfigure
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider", plugins=[Probe()]).assert_outcomes(passed=1)
    assert seen[1] is before  # without an endpoint the plugin changes nothing


# ---------------------------------------------------------------- results folder


def test_unwritable_results_folder_stops_before_any_request(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    # Tests run as root, which writes through chmod 0o500: a path under a regular file cannot
    # be created by anyone.
    srv = make_server()
    (pytester.path / "a_file").write_text("x")
    out = pytester.path / "a_file" / "results"
    result = run_evalchemy(
        pytester, srv.url, config_option(pytester.path, ARC2), f"--evalchemy-output={out}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy: results folder '{out}' is not writable (Not a directory); "
            "pass --evalchemy-output with a writable folder"
        ]
    )
    assert srv.stats()["requests"] == {}  # not even the endpoint check
    assert_no_traceback(result)


def test_a_write_that_fails_stops_the_run_before_any_request(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    """A full disk, simulated: files can be created but not written (a file size limit of
    0 bytes fails every write with EFBIG, as a full disk fails them with ENOSPC)."""
    srv = make_server()
    pytester.makeconftest(
        "import resource, signal, tempfile\n"
        "def pytest_configure(config):\n"
        "    tempfile.gettempdir()  # found while writes still work\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
    )
    # Pipes, not files (runpytest_subprocess writes its output to files, which would fail).
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider"),
            *(f"--evalchemy-endpoint={srv.url}", config_option(pytester.path, ARC2)),
        ],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "ERROR: evalchemy: results folder" in done.stderr
    assert "is not writable (File too large)" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert srv.stats()["requests"] == {}


def test_unsafe_resume_id_and_config_output_path_are_refused(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(
        pytester, server.url, config_option(pytester.path, ARC2), "--evalchemy-resume=../x"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*run id '../x' is not a safe folder name*"])
    tasks = {"mini_arc": offline_task("mini_arc", output_path="/tmp/evalchemy-escape")}
    result = run_evalchemy(pytester, server.url, config_option(pytester.path, tasks))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*tasks.mini_arc.output_path: '/tmp/evalchemy-escape' leaves the working directory*"]
    )
    assert_no_traceback(result)


# ---------------------------------------------------------------- secrets


def test_openai_api_key_is_sent_and_never_written(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-openai-Xq7-secret-value"
    srv = make_server(api_key=secret)  # answers 401 without it: a pass proves it was sent
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=2, log_samples=True),
        "mini_gsm8k": offline_task("mini_gsm8k", limit=2, log_samples=True),
    }
    result = run_evalchemy(
        pytester,
        srv.url,
        config_option(pytester.path, tasks),
        "--junitxml=junit.xml",
        "--evalchemy-log-level=DEBUG",
        "-rA",
    )
    result.assert_outcomes(passed=2)
    assert (pytester.path / "junit.xml").is_file()
    assert_nowhere([secret], pytester.path, stdout=result.stdout.str(), stderr=result.stderr.str())


def test_api_key_is_absent_from_dry_run(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EVALCHEMY_API_KEY": "sk-evalchemy-dry-1",
        "OPENAI_API_KEY": "sk-openai-dry-2",
    }
    done = subprocess.run(
        [
            str(REPO / "run_evalchemy.sh"),
            "--dry-run",
            "--endpoint",
            "http://bob:pw-dry-secret@127.0.0.1:9/v1/completions",
            "--config",
            str(REPO / "configs" / "offline_config.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "OPENAI_API_KEY=*** lm-eval run" in done.stdout
    for secret in ("sk-evalchemy-dry-1", "sk-openai-dry-2", "pw-dry-secret", "bob:"):
        assert_nowhere([secret], tmp_path, stdout=done.stdout, stderr=done.stderr)


@pytest.mark.parametrize("outcome", ["passes", "errors"])
def test_credentials_in_the_endpoint_url_are_used_and_never_written(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    auth_headers: list[tuple[str, str | None]],
    outcome: str,
) -> None:
    srv = make_server()
    url = srv.completions_url.replace("http://", "http://alice:pw-Zq9-secret@")
    plugins: tuple[object, ...] = ()
    extra: tuple[str, ...] = ()  # passes: the default (aiohttp, which sends the URL's basic auth)
    if outcome == "errors":
        # An HTTP error quotes the URL it was posting to: the message must lose the credentials
        # (requests' message, one request at a time).
        plugins = (ArmFaults(srv, {"fail_first": 100, "fail_status": 500}),)
        extra = (ONE_AT_A_TIME,)
    result = run_evalchemy(
        pytester,
        url,
        config_option(pytester.path, ARC2),
        "--junitxml=junit.xml",
        "--evalchemy-max-retries=1",
        "--evalchemy-outage-timeout=0",
        "-rA",
        *extra,
        plugins=plugins,
    )
    if outcome == "passes":
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(failed=1)
        message = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]["message"]
        assert f"for url: {srv.completions_url}" in message
    basic = "Basic " + base64.b64encode(b"alice:pw-Zq9-secret").decode()
    # requests turns the URL's credentials into basic auth, for the check and for lm-eval.
    assert ("/v1/models", basic) in auth_headers
    assert ("/v1/completions", basic) in auth_headers
    assert read_summary(pytester.path / "results")["endpoint"] == srv.completions_url
    for secret in ("pw-Zq9-secret", "alice:"):
        assert_nowhere(
            [secret], pytester.path, stdout=result.stdout.str(), stderr=result.stderr.str()
        )


# ---------------------------------------------------------------- task code


def _unsafe_task(root: Path) -> str:
    """An include path with a task that says ``unsafe_code: true`` (mini_arc otherwise)."""
    folder = root / "mytasks"
    folder.mkdir()
    (folder / "unsafe_arc.yaml").write_text(
        f"include: {REPO / 'benchmarks' / 'mini_arc.yaml'}\ntask: unsafe_arc\nunsafe_code: true\n"
    )
    tasks = {"unsafe_arc": offline_task("unsafe_arc", limit=2)}
    return config_option(root, tasks, include_paths=["mytasks"])


def test_task_marked_unsafe_code_runs_only_with_the_opt_in(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer]
) -> None:
    srv = make_server()
    cfg = _unsafe_task(pytester.path)
    result = run_evalchemy(pytester, srv.url, cfg, "--evalchemy-run-id=no")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*unsafe_arc/unsafe_arc: lm-eval failed: ValueError: Attempted to run task: unsafe_arc "
            "which is marked as unsafe*pass --evalchemy-allow-unsafe-code if you trust it"
        ]
    )
    # The endpoint check's requests: nothing was evaluated.
    assert srv.stats()["completions"] == CHECK_COMPLETIONS
    result = run_evalchemy(
        pytester, srv.url, cfg, "--evalchemy-run-id=yes", "--evalchemy-allow-unsafe-code"
    )
    result.assert_outcomes(passed=1)
    record = json.loads(
        (pytester.path / "results" / "yes" / "evalchemy_summary_yes.json").read_text()
    )["tasks"]["unsafe_arc/unsafe_arc"]
    assert record["lm_eval_command"].endswith("--confirm_run_unsafe_code --seed 0,1234,1234,1234")


def test_function_tags_run_task_code_only_when_the_item_runs(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    """What is not prevented: ``!function`` imports the Python file next to a task YAML. It
    runs when the item runs, as a conftest.py would; collecting, --collect-only and the CLI's
    --list-benchmarks, --validate-config and --dry-run never import it."""
    root = pytester.path
    marker = root / "imported.txt"
    folder = root / "mytasks"
    folder.mkdir()
    (folder / "mycode.py").write_text(
        "import importlib.util, pathlib\n"
        f"pathlib.Path({str(marker)!r}).open('a').write('imported\\n')\n"
        "spec = importlib.util.spec_from_file_location(\n"
        f"    'evalchemy_offline_copy', {str(REPO / 'benchmarks' / 'offline_data.py')!r})\n"
        "offline = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(offline)\n"
        "def load(**kwargs):\n"
        "    return offline.mini_arc()\n"
    )
    (folder / "my_arc.yaml").write_text(
        f"include: {REPO / 'benchmarks' / 'mini_arc.yaml'}\n"
        "task: my_arc\n"
        "custom_dataset: !function mycode.load\n"
    )
    tasks = {"my_arc": offline_task("my_arc", limit=2)}
    cfg = config_option(root, tasks, include_paths=["mytasks"])
    run_evalchemy(pytester, server.url, cfg, "--collect-only").assert_outcomes()
    assert not marker.exists()
    for mode in ("--list-benchmarks", "--validate-config", "--dry-run"):
        done = subprocess.run(
            [str(REPO / "run_evalchemy.sh"), mode, "--config", str(root / "eval.json")],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert not marker.exists(), mode
    run_evalchemy(pytester, server.url, cfg).assert_outcomes(passed=1)
    assert marker.read_text() == "imported\n"


# ---------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    for cmd in (
        [
            *("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"),
            *("-subj", "/CN=evalchemy test CA", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        [
            *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"),
        ],
    ):
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture
def https_server(
    tls: dict[str, Path], make_server: Callable[..., EvalchemyTestServer]
) -> EvalchemyTestServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    return make_server(ssl_context=context)


def test_https_without_the_ca_fails_the_check_with_a_tls_message(
    pytester: pytest.Pytester, https_server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(pytester, https_server.url, config_option(pytester.path, ARC2))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: evalchemy endpoint check failed: TLS error talking to {https_server.url}"
            "/v1/models: *CERTIFICATE_VERIFY_FAILED*pass --evalchemy-ca-bundle PATH (or set "
            "REQUESTS_CA_BUNDLE); --evalchemy-insecure skips the check"
        ]
    )
    assert https_server.stats()["requests"] == {}
    assert_no_traceback(result)


@pytest.mark.parametrize(
    ("how", "concurrency"),
    [("option", 1), ("option", 2), ("env", 1)],
    ids=["ca-bundle", "ca-bundle-concurrent", "REQUESTS_CA_BUNDLE"],
)
def test_https_with_the_ca_bundle_runs(
    pytester: pytest.Pytester,
    https_server: EvalchemyTestServer,
    tls: dict[str, Path],
    answer_key: list[AnswerEntry],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    concurrency: int,
) -> None:
    args = [f"--evalchemy-concurrency={concurrency}"]
    if how == "option":
        args.append(f"--evalchemy-ca-bundle={tls['ca']}")
    else:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls["ca"]))
    result = run_evalchemy(pytester, https_server.url, config_option(pytester.path, ARC2), *args)
    result.assert_outcomes(passed=1)
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["metrics"]["mini_arc"]["acc,none"] == expected(answer_key, "mini_arc", 4)
    assert https_server.stats()["completions"] > 1


def test_https_insecure_runs_and_warns(
    pytester: pytest.Pytester, https_server: EvalchemyTestServer
) -> None:
    result = run_evalchemy(
        pytester, https_server.url, config_option(pytester.path, ARC2), "--evalchemy-insecure"
    )
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestConfigWarning: evalchemy: --evalchemy-insecure: the endpoint's TLS certificate is not verified*"
        ]
    )
    assert "InsecureRequestWarning" not in result.stdout.str()


def test_ca_bundle_and_insecure_together_are_refused(
    pytester: pytest.Pytester, tls: dict[str, Path]
) -> None:
    result = run_evalchemy(
        pytester,
        "https://127.0.0.1:9/v1/completions",
        config_option(pytester.path, ARC2),
        f"--evalchemy-ca-bundle={tls['ca']}",
        "--evalchemy-insecure",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--evalchemy-ca-bundle checks the certificate*give one"])
