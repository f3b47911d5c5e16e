"""The canary: the endpoint check scores one fixed text, the summary keeps it, and two runs
that name the same model but were served other weights (the test server's ``weights``
switch) are told apart in the comparison report and the baseline check, while every score
stays the same."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.cli.report import make_report
from pytest_evalchemy.core.endpoint import Endpoint
from pytest_evalchemy.judge.canary import (
    CANARY_ABSOLUTE_TOLERANCE,
    ServedRun,
    different_weights,
    weight_changes,
)
from pytest_evalchemy.run.chat_check import endpoint_findings, inspect_chat
from pytest_evalchemy.run.endpoint import CANARY_TEXT, check_endpoint
from pytest_evalchemy.testing.server import LP_UNKNOWN_DOC, EvalchemyTestServer, unmarked_logprob

from .helpers import (
    ARC2,
    check_summary,
    config_option,
    read_run_summary,
    run_evalchemy,
    write_run_summary,
)

SHA = hashlib.sha256(CANARY_TEXT.encode("utf-8")).hexdigest()
WEIGHTS = "fine-tuned"
NOTE = "name the same model evalchemy-test-model but their canaries differ"


def _canary(logprob_sum: float, tokens: int = 30, sha: str = SHA) -> dict[str, Any]:
    return {"tokens": tokens, "logprob_sum": logprob_sum, "text_sha256": sha}


def _served(name: str, canary: dict[str, Any] | None, model: str = "m") -> ServedRun:
    return ServedRun(name, model, canary)


# ---------------------------------------------------------------- the pure rule


def test_canaries_within_the_noise_are_the_same_weights() -> None:
    # 1e-3 of -123.4 is 0.12: a bf16 run-to-run wobble.
    assert different_weights(_served("a", _canary(-123.4)), _served("b", _canary(-123.5))) is None
    # Near zero the absolute floor holds.
    small = CANARY_ABSOLUTE_TOLERANCE / 2
    assert (
        different_weights(_served("a", _canary(-1.0)), _served("b", _canary(-1.0 - small))) is None
    )


def test_canaries_beyond_the_noise_are_other_weights_in_one_line() -> None:
    line = different_weights(_served("A", _canary(-123.4)), _served("B", _canary(-130.2)))
    assert line == (
        "runs A and B name the same model m but their canaries differ (logprob sum -123.4 vs "
        "-130.2): they served different weights"
    )
    # As many decimals as tell the sums apart.
    line = different_weights(_served("A", _canary(-1.12)), _served("B", _canary(-1.06)))
    assert line is not None
    assert "(logprob sum -1.12 vs -1.06)" in line
    # The same text in another number of tokens: another tokenizer.
    assert different_weights(_served("A", _canary(-50.0)), _served("B", _canary(-50.0, 31)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (_served("a", _canary(-10.0), "m"), _served("b", _canary(-99.0), "other")),
        (_served("a", _canary(-10.0)), _served("b", _canary(-99.0, sha="0" * 64))),
        (_served("a", None), _served("b", _canary(-99.0))),
        (_served("a", _canary(-10.0)), _served("b", {"tokens": 30})),
        (_served("a", _canary(-10.0), None), _served("b", _canary(-99.0), None)),
    ],
    ids=["other-model", "other-text", "no-canary", "no-sum", "no-model"],
)
def test_no_verdict_without_two_comparable_canaries(a: ServedRun, b: ServedRun) -> None:
    assert different_weights(a, b) is None


def test_an_older_summary_has_no_canary_and_no_verdict() -> None:
    old = ServedRun.of_summary({"run_id": "old", "model": "m", "tasks": {}})
    assert old == ServedRun("old", "m", None)
    new = ServedRun.of_summary({"run_id": "new", "model": "m", "endpoint_check": {"canary": None}})
    assert different_weights(old, new) is None


def test_weight_changes_follow_the_comparisons_reference() -> None:
    runs = [
        _served("1", _canary(-10.0)),
        _served("2", _canary(-20.0)),
        _served("3", _canary(-20.0)),
    ]
    assert [line.split(" name")[0] for line in weight_changes(runs)] == ["runs 1 and 2"]
    first = weight_changes(runs, reference="first")
    assert [line.split(" name")[0] for line in first] == ["runs 1 and 2", "runs 1 and 3"]


def test_the_servers_weights_move_only_unmarked_text() -> None:
    assert unmarked_logprob("") == LP_UNKNOWN_DOC
    assert unmarked_logprob(WEIGHTS) == unmarked_logprob(WEIGHTS) < LP_UNKNOWN_DOC
    srv = EvalchemyTestServer(weights=WEIGHTS)
    assert srv.prompt_logprob(CANARY_TEXT) == unmarked_logprob(WEIGHTS)
    assert EvalchemyTestServer(flip=["mini_arc:0"]).prompt_logprob(CANARY_TEXT) < LP_UNKNOWN_DOC


# ---------------------------------------------------------------- the endpoint check


def test_no_logprob_request_no_canary(make_server) -> None:
    srv = make_server(chat_only=True)
    chat = Endpoint(srv.chat_completions_url)
    info = check_endpoint(chat, need_logprobs=False, need_tokenizer=False)
    info = inspect_chat(info, chat, probe_chat=False, loglikelihood=True)
    assert info.canary is None
    assert endpoint_findings(info)["canary"] is None
    # Only the chat check's look for /v1/completions (answered 404), no canary.
    assert srv.stats()["completions"] == 1


def test_behind_a_chat_url_the_completions_endpoint_gives_the_canary(make_server) -> None:
    srv = make_server(weights=WEIGHTS)
    chat = Endpoint(srv.chat_completions_url)
    info = check_endpoint(chat, need_logprobs=False, need_tokenizer=False)
    assert info.canary is None  # not asked yet: the chat check asks the completions endpoint
    info = inspect_chat(info, chat, probe_chat=False, loglikelihood=True)
    assert info.canary is not None
    n = len(CANARY_TEXT.encode("utf-8"))
    assert info.canary.tokens == n
    assert info.canary.logprob_sum == pytest.approx(n * unmarked_logprob(WEIGHTS))


# ---------------------------------------------------------------- runs against the test server


def _run(pytester: pytest.Pytester, srv: EvalchemyTestServer, run_id: str, *args: str) -> None:
    result = run_evalchemy(
        pytester,
        srv.completions_url,
        config_option(pytester.path, ARC2),
        f"--evalchemy-run-id={run_id}",
        *args,
    )
    assert result.ret == 0, result.stdout.str()


def _report(*folders: Path) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert make_report([str(f) for f in folders], None, None, stdout=out, stderr=err) == 0
    return out.getvalue()


def test_the_summary_records_the_canary(pytester: pytest.Pytester, make_server) -> None:
    srv = make_server()
    _run(pytester, srv, "base")
    summary = check_summary(read_run_summary(pytester.path / "results", "base"))
    canary = summary["endpoint_check"]["canary"]
    # Byte-level tokens after the BOS, whose logprob is null; no answer-key marker: -2.0 each.
    n = len(CANARY_TEXT.encode("utf-8"))
    assert canary == {
        "tokens": n,
        "logprob_sum": pytest.approx(n * LP_UNKNOWN_DOC),
        "text_sha256": SHA,
    }


def test_the_same_weights_raise_no_warning(pytester: pytest.Pytester, make_server) -> None:
    first, second = make_server(), make_server()
    _run(pytester, first, "one")
    _run(pytester, second, "two", "--evalchemy-baseline=results/one")
    results = pytester.path / "results"
    summary = read_run_summary(results, "two")
    assert not any("canaries" in n for n in summary["gate"].get("notes", []))
    assert "canaries" not in _report(results / "one", results / "two")
    assert "canaries" not in (pytester.path / "compare.html").read_text(encoding="utf-8")


def test_other_weights_under_the_same_name_are_said_to_differ(
    pytester: pytest.Pytester, make_server
) -> None:
    usual, other = make_server(), make_server(weights=WEIGHTS)
    _run(pytester, usual, "usual")
    # Every score is the same: the baseline check passes, and says the weights differ.
    _run(pytester, other, "other", "--evalchemy-baseline=results/usual", "-W", "default")
    results = pytester.path / "results"
    usual_summary = read_run_summary(results, "usual")
    other_summary = check_summary(read_run_summary(results, "other"))
    record = other_summary["tasks"]["mini_arc/mini_arc"]
    assert record["metrics"] == usual_summary["tasks"]["mini_arc/mini_arc"]["metrics"]
    n = len(CANARY_TEXT.encode("utf-8"))
    assert other_summary["endpoint_check"]["canary"]["logprob_sum"] == pytest.approx(
        n * unmarked_logprob(WEIGHTS)
    )
    (note,) = [n for n in other_summary["gate"]["notes"] if NOTE in n]
    assert note.startswith("mini_arc/mini_arc: not like for like with the baseline (usual): ")
    assert note.endswith(
        "runs usual and other " + NOTE + f" (logprob sum {n * -2.0:.1f} vs "
        f"{n * unmarked_logprob(WEIGHTS):.1f}): they served different weights"
    )
    assert NOTE in json.dumps(record["gate_notes"])

    printed = _report(results / "usual", results / "other")
    (line,) = [x for x in printed.splitlines() if NOTE in x]
    assert line.startswith("warning: runs usual and other " + NOTE)
    page = (pytester.path / "compare.html").read_text(encoding="utf-8")
    assert 'class="warning weights"' in page
    assert "they served different weights" in page


def test_a_summary_without_a_canary_gives_no_verdict(
    pytester: pytest.Pytester, make_server
) -> None:
    results = pytester.path / "results"
    old = write_run_summary(
        results, "old", model="evalchemy-test-model", tasks={}, started_at="2026-01-01T00:00:00Z"
    )
    _run(pytester, make_server(weights=WEIGHTS), "new", "--evalchemy-baseline=results/old")
    assert "canaries" not in _report(old, results / "new")
    summary = read_run_summary(results, "new")
    assert not any("canaries" in n for n in summary["gate"].get("notes", []))
