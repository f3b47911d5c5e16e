"""Credentials in the endpoint URL and the API key: sent as one Authorization header, and
found in no file of the results folder and nowhere in pytest's output, in any form (plain,
percent-encoded, base64 in a basic-auth header, inside lm-eval's dump of a failed request's
headers). Real pytest runs, real lm-eval, the test server requiring the credentials."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    assert_nowhere,
    config_option,
    offline_task,
    read_run_summary,
    read_summary,
    run_metrics,
)

USER = "ci-bot"
# Distinctive, and with a character that must be percent-encoded in a URL ("/" as %2F), so the
# quoted form (as typed in the URL) and the unquoted one (as sent) differ.
PASSWORD = "Zq9/pw-Kx7-secret"
QUOTED = "Zq9%2Fpw-Kx7-secret"
API_KEY = "sk-cred-Vb4-secret-key"


def _forms(user: str = USER, password: str = PASSWORD, quoted: str = QUOTED) -> list[str]:
    """Every form the URL's credentials may take in text."""
    return [
        password,
        quoted,
        quoted.replace("%2F", "%2f"),
        base64.b64encode(f"{user}:{password}".encode()).decode(),
        base64.b64encode(f"{user}:{quoted}".encode()).decode(),
    ]


def _with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{QUOTED}@")


@pytest.mark.parametrize(
    ("concurrency", "workers"),
    [("auto", ()), ("1", ()), ("auto", ("-n", "2"))],
    ids=["auto", "one-at-a-time", "auto-xdist"],
)
def test_url_credentials_never_written_when_the_server_fails_mid_run(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    concurrency: str,
    workers: tuple[str, ...],
) -> None:
    """A server that wants basic auth and starts failing after a few answers: lm-eval logs
    each failed request, aiohttp's error with the request's headers (the basic-auth header)."""
    # Completion request 1 is the endpoint check's probe; the first item gets 2 answers, then
    # every request answers 500.
    srv = make_server(basic_auth=f"{USER}:{PASSWORD}", fail_after=3, fail_status=500)
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=4),
        "mini_mmlu": offline_task("mini_mmlu", limit=4),
    }
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={_with_credentials(srv.completions_url)}",
        config_option(pytester.path, tasks),
        f"--evalchemy-concurrency={concurrency}",
        "--evalchemy-max-retries=1",
        "--evalchemy-outage-timeout=0",
        "--evalchemy-log-level=DEBUG",
        "--junitxml=results/junit.xml",
        "--log-file=results/pytest.log",
        "--log-file-level=DEBUG",
        "--log-cli-level=DEBUG",
        "-rA",
        "-p",
        "no:cacheprovider",
        *workers,
    )
    result.assert_outcomes(failed=2)
    records = read_summary(pytester.path / "results")["tasks"]
    assert all("HTTP 500" in r["message"] for r in records.values()), records
    assert srv.stats()["faults"]["fail"] >= 2  # the failures came after answers: mid-run
    assert_nowhere(_forms(), pytester.path, stdout=result.stdout.str(), stderr=result.stderr.str())
    logs = sorted((pytester.path / "results").rglob("lm_eval.log"))
    assert len(logs) == 2
    if concurrency == "auto":
        # lm-eval's log of the failed request (aiohttp's error, with the request's headers)
        # is kept, the header's value scrubbed.
        assert "'Authorization': 'Basic ***'" in logs[0].read_text()


# A generation task (through the chat endpoint with a chat URL) and a loglikelihood one
# (always through /v1/completions, of the same server behind a chat URL).
TASKS = {
    "mini_gsm8k": offline_task("mini_gsm8k", limit=4),
    "mini_arc": offline_task("mini_arc", limit=4),
}


@pytest.mark.parametrize("with_key", [False, True], ids=["url-only", "api-key-too"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_url_credentials_work_for_both_endpoints_and_the_api_key_wins(
    pytester: pytest.Pytester,
    make_server: Callable[..., EvalchemyTestServer],
    auth_headers: list[tuple[str, str | None]],
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    with_key: bool,
) -> None:
    """A URL with ``user:password@`` scores what the same server without credentials scores,
    under the default concurrency (aiohttp, which refuses a URL's credentials next to an
    Authorization header). With an API key as well, the key alone is sent."""
    plain = make_server()
    url_of = {"chat": "chat_completions_url", "completions": "completions_url"}[endpoint]
    common = (
        config_option(pytester.path, TASKS),
        "-p",
        "no:cacheprovider",
        "--evalchemy-no-report",
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={getattr(plain, url_of)}", "--evalchemy-run-id=plain", *common
    )
    result.assert_outcomes(passed=2)
    if with_key:
        srv = make_server(api_key=API_KEY)  # a bearer token or 401
        monkeypatch.setenv("EVALCHEMY_API_KEY", API_KEY)
    else:
        srv = make_server(basic_auth=f"{USER}:{PASSWORD}")  # basic auth or 401
    auth_headers.clear()
    result = pytester.runpytest(
        f"--evalchemy-endpoint={_with_credentials(getattr(srv, url_of))}",
        "--evalchemy-run-id=creds",
        "--evalchemy-log-level=DEBUG",
        "-rA",
        *common,
    )
    result.assert_outcomes(passed=2)
    assert run_metrics(pytester.path / "results", "creds") == run_metrics(
        pytester.path / "results", "plain"
    )
    sent = {header for path, header in auth_headers if path != "/stats"}
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert sent == ({f"Bearer {API_KEY}"} if with_key else {basic})
    paths = {path for path, _ in auth_headers}
    assert {"/v1/models", "/v1/completions", "/tokenize"} <= paths
    if endpoint == "chat":
        assert "/v1/chat/completions" in paths
    if with_key:
        # One line says the URL's credentials were not sent, in the terminal and the summary.
        assert any("user:password are not sent" in w for w in _warnings(pytester, "creds"))
        result.stdout.fnmatch_lines(["*user:password are not sent, the API key is*"])
    assert_nowhere(
        [*_forms(), API_KEY], pytester.path, stdout=result.stdout.str(), stderr=result.stderr.str()
    )


def _warnings(pytester: pytest.Pytester, run_id: str) -> list[str]:
    return read_run_summary(pytester.path / "results", run_id)["config_warnings"]


def test_the_forms_scrubbed_and_the_one_header_sent() -> None:
    """What ``redact`` scrubs and which header wins, for the cases the runs above do not
    reach: a token given as the URL's user name, and no credentials at all."""
    from pytest_evalchemy.core.redact import credential_forms, scrub, secrets_of
    from pytest_evalchemy.run.endpoint import authorization

    token = "tok-Hq3-secret"
    url = f"http://{token}@host:8000/v1/completions"
    text = (
        f"POST {url} {{'Authorization': 'Basic {base64.b64encode(f'{token}:'.encode()).decode()}'}}"
    )
    clean = scrub(text, credential_forms(url))
    assert token not in clean
    assert "Basic ***" in clean
    assert "http://host:8000/v1/" in clean
    assert authorization(url, None) == (
        "http://host:8000/v1/completions",
        {"Authorization": "Basic " + base64.b64encode(f"{token}:".encode()).decode()},
    )
    assert authorization(url, API_KEY)[1] == {"Authorization": f"Bearer {API_KEY}"}
    assert authorization("http://host/v1/completions", None) == ("http://host/v1/completions", {})
    assert secrets_of(["http://host/v1/completions", None], None) == ()
